"""The torch backend's GPU modes: CUDA-graph replay, fp16 autocast, the official AMP.

All of these need an NVIDIA GPU and skip without one; the CPU errors for these options are
tested in test_engine.py.
"""
from __future__ import annotations

import pytest
import torch

import vosrt
from fakes.backends import ArithmeticBackend
from helpers import GOLDEN_CONFIG, GPU_MAX_DPROB, JOINTFORMER_GOLDEN_CONFIG, assert_golden, run_golden_clip
from stage_errors import assert_fp16_noise, davis_frames, fp16_torch_backend, record_calls, stage_errors
from vosrt.runtime.backends.cuda_graphs import CudaGraphBackend

pytestmark = pytest.mark.gpu


def test_cuda_graphs_reproduce_official_outputs(seeded_weights):
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), device="cuda", cuda_graph=True,
                         **GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, "cutie-small"), GPU_MAX_DPROB, ignore_ties=True)
    captured = session.backend.captured
    assert captured and all(c is not None for c in captured.values())  # every stage ran as a graph


def test_jointformer_cuda_graphs_reproduce_official_outputs(seeded_weights):
    session = vosrt.load("jointformer", weights=seeded_weights("jointformer"), device="cuda", cuda_graph=True,
                         **JOINTFORMER_GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, "jointformer", num_frames=20), GPU_MAX_DPROB)
    assert session.backend.captured and all(c is not None for c in session.backend.captured.values())


# The judo clip at 480x854, objects joining on frames 0, 5 and 8 (three buckets).
JUDO_PLAN = [(0, [1]), (1, None), (2, None), (5, [2]), (6, None), (8, [3]), (9, None)]


@pytest.fixture(scope="module")
def judo_calls(seeded_weights):
    """An fp32 eager session of cutie-small and the stage calls (inputs, outputs) it made on JUDO_PLAN."""
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), device="cuda")
    return session, record_calls(session, davis_frames("judo", JUDO_PLAN))


def test_fp16_stages_stay_within_rounding_of_fp32(judo_calls):
    """The fp16 mode per stage on the inputs fp32 recorded (tests/stage_errors.py says why not whole clips).
    The official AMP runs each stage under the same autocast: per stage it is the same computation."""
    session, calls = judo_calls
    assert_fp16_noise(stage_errors(fp16_torch_backend("cutie-small", session)._run, calls))


def test_fp16_graphs_compute_what_fp16_eager_computes(judo_calls):
    """CUDA graphs of the fp16 mode against the same mode eager on the same inputs: the same kernels, so
    equal up to a cuDNN algorithm that might differ inside a capture; stale or misplaced buffers are far off."""
    session, recorded = judo_calls
    fp16 = fp16_torch_backend("cutie-small", session)
    calls = [(stage, inputs, [x.clone() for x in fp16._run(stage, inputs)]) for stage, inputs, _ in recorded]
    graphs = CudaGraphBackend(fp16)
    errors = stage_errors(graphs._run, calls)
    assert_fp16_noise(errors, {"max": 1e-3, "mean": 1e-4})
    assert len(graphs.captured) < len(calls) and all(c is not None for c in graphs.captured.values())


def test_memory_inputs_are_read_in_place_and_keyed_by_address():
    graphs = CudaGraphBackend(ArithmeticBackend("cuda"))
    x, memory = torch.rand(4, device="cuda"), torch.rand(4, device="cuda")
    torch.testing.assert_close(graphs.run("read", x=x, memory=memory)["y"], x + memory)
    memory.add_(1)  # the session updates its memory buffers in place between frames
    torch.testing.assert_close(graphs.run("read", x=x, memory=memory)["y"], x + memory)  # replayed, no copy
    (captured,) = graphs.captured.values()
    assert list(captured.copied) == [0]
    other = memory.clone()  # new buffers (objects added): a new graph
    torch.testing.assert_close(graphs.run("read", x=x, memory=other)["y"], x + other)
    assert len(graphs.captured) == 2


def test_shapes_get_their_own_graph_and_replay():
    graphs = CudaGraphBackend(ArithmeticBackend("cuda"))
    for shape in ((2, 3), (2, 3), (4, 5), (2, 3)):
        x = torch.rand(shape, device="cuda")
        torch.testing.assert_close(graphs.run("double", x=x)["y"], x * 2)
    assert len(graphs.captured) == 2
    assert graphs.inner.calls == 2 * (graphs.warmup + 1)  # warm-up and capture only; replays skip Python


def test_graphs_sharing_the_pool_keep_each_others_outputs():
    """Every graph allocates from one pool: replaying one graph rewrites its temporaries there, which
    must not be where another graph's outputs are (they are allocated outside the pool)."""
    graphs = CudaGraphBackend(ArithmeticBackend("cuda"))
    x = torch.rand(1 << 16, device="cuda")
    first, second = torch.rand_like(x), torch.rand_like(x)  # two memories of one shape: two graphs
    graphs.run("blend", x=x, memory=first)
    y_second = graphs.run("blend", x=x, memory=second)["y"]
    expected = (3 * x + second) * 2
    graphs.run("blend", x=torch.rand_like(x), memory=first)  # replays the first graph
    torch.testing.assert_close(y_second, expected)
    assert len(graphs.captured) == 2 and all(c.graph.pool() == graphs.pool for c in graphs.captured.values())


def test_failed_capture_falls_back_to_eager():
    graphs = CudaGraphBackend(ArithmeticBackend("cuda", host_sync=True))
    x = torch.rand(3, device="cuda")
    with pytest.warns(RuntimeWarning, match="CUDA-graph capture of double failed, running it eagerly"):
        torch.testing.assert_close(graphs.run("double", x=x)["y"], x * 2)
    torch.testing.assert_close(graphs.run("double", x=x + 1)["y"], (x + 1) * 2)  # eager now, no second attempt
    assert list(graphs.captured.values()) == [None]
