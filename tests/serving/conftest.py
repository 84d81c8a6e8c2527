"""Fixtures of the serving tests: a real ``tritonserver`` on 127.0.0.1 over a repository written by
``vosrt export-triton`` into a temporary folder, stopped at the end.

The server runs from its own Python environment (docs/serving.md): ``VOSRT_TRITON_ENV``, else
``.venv-server`` at the top of the checkout (what .ci/run builds). Without it the tests skip;
``VOSRT_REQUIRE_SERVER=1`` (set by .ci/run) makes that a failure.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from serving_setup import CUTIE, server_env
from vosrt.serving.local_server import LocalServer
from vosrt.serving.repository import ServingOptions, export_triton


@pytest.fixture(scope="session")
def triton_repository(seeded_weights, tmp_path_factory):
    """``triton_repository(model, options, **serving)`` -> a repository for the seed-1 weights."""
    def make(model: str, options: dict, **serving) -> Path:
        serving = ServingOptions(**{"max_streams": 8, "queue_delay_us": 20000} | serving, options=options)
        return export_triton(model, tmp_path_factory.mktemp("triton") / "repository", serving,
                             weights=seeded_weights(model))

    return make


@pytest.fixture()
def start_server(tmp_path):
    """``start_server(repository, grpc_port=None)`` -> a started :class:`LocalServer`; every server
    started is stopped (and its processes killed) at the end of the test."""
    env = server_env()
    started: list[LocalServer] = []

    def start(repository: Path, grpc_port: int | None = None) -> LocalServer:
        server = LocalServer(repository, env, grpc_port=grpc_port, log=tmp_path / f"server-{len(started)}.log")
        started.append(server)
        return server.start(timeout=240)

    yield start
    for server in started:
        with contextlib.suppress(Exception):
            server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def cutie_server(triton_repository, tmp_path_factory):
    """cutie-small served by one CPU instance (idle timeout 120 s), for the tests of one module."""
    env = server_env()
    log = tmp_path_factory.mktemp("logs") / "cutie-server.log"
    with LocalServer(triton_repository("cutie-small", CUTIE, idle_seconds=120), env, log=log) as server:
        yield server
