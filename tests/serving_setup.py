"""What the serving tests share: the server's Python environment and the models' small settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vosrt.serving.local_server import SERVER_ENV, server_distribution

CHECKOUT_SERVER_ENV = Path(__file__).resolve().parents[1] / ".venv-server"
# Small frames, small memory: the settings of the multi-stream tests (tests/unit/test_batch.py).
CUTIE = dict(mem_every=2, max_mem_frames=3, top_k=30, max_internal_size=128)
JOINTFORMER = dict(mem_every=2, max_mem_frames=2, top_k=30, max_internal_size=128)


def server_env() -> Path:
    """The server's Python environment; skips (fails with VOSRT_REQUIRE_SERVER=1) without one."""
    env = Path(os.environ.get(SERVER_ENV) or CHECKOUT_SERVER_ENV)
    try:
        server_distribution(env)
    except FileNotFoundError as err:
        if os.environ.get("VOSRT_REQUIRE_SERVER") == "1":
            pytest.fail(f"{err}; VOSRT_REQUIRE_SERVER=1 asks for every server test to run")
        pytest.skip(f"no Triton server to test with: {err}")
    return env


