"""CUDA-graph replay bookkeeping on the CPU: which calls share a graph, what is kept, what is
passed through, which TensorRT execution context each graph uses. Either
the capture is replaced by a stand-in, or torch.cuda's graph and stream calls are (``fake_cuda``:
the capture then runs the stage once and a replay does nothing); tests/gpu runs the real ones."""
from __future__ import annotations

import contextlib
import types
import warnings

import pytest
import torch

from fakes.backends import STAGES, ArithmeticBackend
from fakes.tensorrt import FakeEngine, FakeTensorRT
from vosrt.runtime.backends import cuda_graphs
from vosrt.runtime.backends.cuda_graphs import CudaGraphBackend
from vosrt.runtime.backends.tensorrt import Engine, TensorRTBackend


class _FakeCapture:
    """Stands in for a captured graph: records the inputs it copies and replays by calling the stage."""

    def __init__(self, run, inputs, in_place, warmup):
        self.run = run
        self.copied = [i for i in range(len(inputs)) if i not in in_place]

    def __call__(self, inputs):
        return self.run(inputs)


class _CudaLabelled(ArithmeticBackend):
    """CPU tensors, but a backend that says it is on CUDA (CudaGraphBackend checks the device)."""

    def __init__(self):
        super().__init__()
        self.device = torch.device("cuda")


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's streams and graphs as CPU stand-ins; ``capturing`` is set inside a capture."""
    state = types.SimpleNamespace(capturing=False)
    stream = types.SimpleNamespace(wait_stream=lambda other: None, cuda_stream=0)

    class Graph:
        def __init__(self):
            self.pool, self.replays = None, 0

        def replay(self):
            self.replays += 1

    @contextlib.contextmanager
    def capture(graph, pool=None):
        graph.pool, state.capturing = pool, True
        try:
            yield
        finally:
            state.capturing = False

    for name, value in dict(Stream=lambda device=None: stream, current_stream=lambda device=None: stream,
                            stream=lambda s: contextlib.nullcontext(), CUDAGraph=Graph, graph=capture).items():
        monkeypatch.setattr(torch.cuda, name, value)
    return state


@pytest.fixture
def graphs(monkeypatch, fake_cuda):
    monkeypatch.setattr(cuda_graphs, "CapturedStage", _FakeCapture)
    return CudaGraphBackend(_CudaLabelled(), max_graphs=3)


def test_the_inner_backends_facts_pass_through(graphs):
    assert graphs.architecture == {"size": 1} and graphs.device == torch.device("cuda")
    assert graphs.stages is graphs.inner.stages and not graphs.captured


def test_memory_is_keyed_by_address_and_not_copied(graphs):
    x, memory = torch.rand(4), torch.rand(4)
    torch.testing.assert_close(graphs.run("read", x=x, memory=memory)["y"], x + memory)
    y = torch.rand(4)
    torch.testing.assert_close(graphs.run("read", x=y, memory=memory)["y"], y + memory)
    assert len(graphs.captured) == 1  # other values of the copied input, same memory: one graph
    (captured,) = graphs.captured.values()
    assert captured.copied == [0]
    graphs.run("read", x=x, memory=memory.clone())  # other buffers of the same shape: a graph of their own
    graphs.run("read", x=x, memory=memory[:1].expand(4))  # same address and shape, other strides
    assert len(graphs.captured) == 3


def test_least_recently_used_graph_goes_first(graphs):
    for n in (2, 3, 4, 2, 5):
        graphs.run("double", x=torch.rand(n))
    assert [key[1][0][0] for key in graphs.captured] == [(4,), (2,), (5,)]


def test_a_failed_capture_runs_eagerly_and_warns_once(monkeypatch, fake_cuda):
    def fail(*args):
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(cuda_graphs, "CapturedStage", fail)
    graphs = CudaGraphBackend(_CudaLabelled())
    x = torch.rand(3)
    with pytest.warns(RuntimeWarning, match="capture of double failed, running it eagerly: operation not"):
        torch.testing.assert_close(graphs.run("double", x=x)["y"], x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        torch.testing.assert_close(graphs.run("double", x=x + 1)["y"], (x + 1) * 2)
    assert list(graphs.captured.values()) == [None]


def test_cpu_backends_are_refused():
    with pytest.raises(ValueError, match="cuda_graph=True needs device='cuda'"):
        CudaGraphBackend(ArithmeticBackend())


def _tensorrt_backend(engine: FakeEngine) -> TensorRTBackend:
    """A TensorRT backend of one engine for stage ``double`` (x -> y), without an engine directory;
    labelled CUDA, on CPU tensors."""
    backend = object.__new__(TensorRTBackend)
    backend.device, backend.stages, backend.architecture, backend.constants = (
        torch.device("cuda"), {"double": STAGES["double"]}, {}, {})
    backend.engines = {"double": Engine(FakeTensorRT(), engine, "double", torch.device("cpu"))}
    return backend


def test_each_tensorrt_graph_captures_an_execution_context_of_its_own(fake_cuda):
    """A captured graph replays the shapes and addresses its context had at capture time: one context per
    graph (per shape here), on the engine's shared activation memory; eager calls keep their own."""
    engine = FakeEngine()
    backend = _tensorrt_backend(engine)
    graphs = CudaGraphBackend(backend)
    small, large = torch.rand(2, 4), torch.rand(3, 4)
    graphs.run("double", x=small)
    graphs.run("double", x=large)
    graphs.run("double", x=small + 1)  # replayed: no new context
    eager, first, second = engine.contexts
    static_inputs = {tuple(c.copied[0].shape): c.copied[0] for c in graphs.captured.values()}
    assert first.shapes["x"] == (2, 4) and second.shapes["x"] == (3, 4)
    assert first.addresses["x"] == static_inputs[2, 4].data_ptr()
    assert second.addresses["x"] == static_inputs[3, 4].data_ptr()
    assert first.runs == second.runs == graphs.warmup + 1 and eager.runs == 0
    activations = backend.engines["double"].activations
    assert {c.device_memory for c in engine.contexts} == {(activations.data_ptr(), FakeEngine.device_memory_size_v2)}
    assert {c.strategy for c in engine.contexts} == {"user_managed"}
    backend.run("double", x=large)
    assert eager.runs == 1 and first.shapes["x"] == (2, 4)  # eager calls leave the graphs' contexts alone
