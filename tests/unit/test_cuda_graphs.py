"""CUDA-graph replay bookkeeping on the CPU: which calls share a graph, what is kept, what is
passed through, which memory pool and which TensorRT execution context each graph uses. Either
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

    def __init__(self, run, inputs, in_place, warmup, pool, stream):
        self.run = run
        self.copied = [i for i in range(len(inputs)) if i not in in_place]

    def __call__(self, inputs):
        return self.run(inputs)


class _CudaLabelled(ArithmeticBackend):
    """CPU tensors, but a backend that says it is on CUDA (CudaGraphBackend checks the device).
    ``returned``: per call, whether it ran inside a (fake) capture and the outputs it returned."""

    def __init__(self, cuda=None):
        super().__init__()
        self.device = torch.device("cuda")
        self.cuda, self.returned = cuda, []

    def _run(self, stage, inputs):
        outputs = super()._run(stage, inputs)
        self.returned.append((bool(self.cuda and self.cuda.capturing), outputs))
        return outputs


class _FakeStream:
    def __init__(self, name):
        self.name, self.cuda_stream = name, 0

    def wait_stream(self, other):
        pass

    def __repr__(self):
        return f"stream {self.name}"


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's streams, graphs and graph pools as CPU stand-ins; ``capturing`` is set inside a capture,
    ``pools``: the pool handles made, ``current``: the thread's current stream (starts as the caller's,
    ``caller``), ``fail_capture_end``: an exception the end of the next capture raises. The graph context
    behaves as torch.cuda.graph does: it enters its capture stream (torch's own one unless given one),
    and on exit ends the capture before it restores the stream."""
    state = types.SimpleNamespace(capturing=False, pools=[], caller=_FakeStream("caller"), fail_capture_end=None)
    state.current = state.caller
    internal = _FakeStream("torch's default capture stream")

    @contextlib.contextmanager
    def use_stream(stream):
        previous, state.current = state.current, stream
        try:
            yield
        finally:
            state.current = previous

    class Graph:
        def __init__(self):
            self.pool, self.replays = None, 0

        def capture_end(self):
            state.capturing = False
            if state.fail_capture_end is not None:
                raise state.fail_capture_end

        def replay(self):
            self.replays += 1

    class GraphContext:
        def __init__(self, graph, pool=None, stream=None):
            self.graph, self.stream_context = graph, use_stream(stream or internal)
            graph.pool = pool

        def __enter__(self):
            self.stream_context.__enter__()
            state.capturing = True

        def __exit__(self, *exc):
            self.graph.capture_end()
            self.stream_context.__exit__(*exc)

    def pool_handle():
        state.pools.append(object())
        return state.pools[-1]

    for name, value in dict(Stream=lambda device=None: _FakeStream("side"), current_stream=lambda device=None:
                            state.current, stream=use_stream, CUDAGraph=Graph, graph=GraphContext,
                            graph_pool_handle=pool_handle).items():
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
    with pytest.warns(RuntimeWarning, match="capture of double failed, running it eagerly: RuntimeError: operation not"):
        torch.testing.assert_close(graphs.run("double", x=x)["y"], x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        torch.testing.assert_close(graphs.run("double", x=x + 1)["y"], (x + 1) * 2)
    assert list(graphs.captured.values()) == [None]


class _CaptureInvalidated(Exception):
    """Not a RuntimeError: what a CUDA or Triton error may surface as."""


@pytest.mark.parametrize("where", ["capture_end", "stage"])
def test_any_capture_error_leaves_the_callers_stream_and_runs_eagerly(fake_cuda, where):
    """The capture fails when torch ends it (torch.cuda.graph then never restores the stream) or in the
    stage under capture, with an error of any type: the thread is back on the caller's stream, the
    warning names the error, and the stage runs eagerly."""
    error = _CaptureInvalidated("cudaErrorStreamCaptureInvalidated: operation failed due to a previous error")
    inner = _CudaLabelled(fake_cuda)
    if where == "capture_end":
        fake_cuda.fail_capture_end = error
    else:
        def fail_under_capture(stage, inputs, run=inner._run):
            if fake_cuda.capturing:
                raise error
            return run(stage, inputs)
        inner._run = fail_under_capture
    graphs = CudaGraphBackend(inner)
    x = torch.rand(3)
    with pytest.warns(RuntimeWarning, match="capture of double failed, running it eagerly: _CaptureInvalidated: cuda"):
        y = graphs.run("double", x=x)["y"]
    assert fake_cuda.current is fake_cuda.caller and not fake_cuda.capturing
    torch.testing.assert_close(y, x * 2)
    assert list(graphs.captured.values()) == [None]


def test_warm_up_and_capture_run_on_the_backends_own_stream(fake_cuda):
    streams = []
    inner = _CudaLabelled(fake_cuda)
    run = inner._run
    inner._run = lambda stage, inputs: streams.append(fake_cuda.current) or run(stage, inputs)
    graphs = CudaGraphBackend(inner)
    graphs.run("double", x=torch.rand(3))
    assert streams == [graphs.stream] * (graphs.warmup + 1) and fake_cuda.current is fake_cuda.caller


def test_cpu_backends_are_refused():
    with pytest.raises(ValueError, match="cuda_graph=True needs device='cuda'"):
        CudaGraphBackend(ArithmeticBackend())


def test_every_graph_allocates_from_the_backends_one_pool(fake_cuda):
    """One shared pool instead of a private pool per graph (up to max_graphs of them)."""
    graphs = CudaGraphBackend(_CudaLabelled(fake_cuda))
    memory = torch.rand(4)
    for n in (2, 3, 4):
        graphs.run("double", x=torch.rand(n))
    graphs.run("read", x=torch.rand(4), memory=memory)
    assert len(graphs.captured) == 4 and fake_cuda.pools == [graphs.pool]
    assert all(captured.graph.pool is graphs.pool for captured in graphs.captured.values())


def test_graph_outputs_are_buffers_made_outside_the_shared_pool(fake_cuda):
    """What the stage returns inside the capture is copied into buffers allocated before it: the pool
    then holds only a replay's temporaries, which another graph's replay may overwrite."""
    inner = _CudaLabelled(fake_cuda)
    graphs = CudaGraphBackend(inner)
    x = torch.rand(3)
    y = graphs.run("double", x=x)["y"]
    torch.testing.assert_close(y, 2 * x)
    inside = [outputs for capturing, outputs in inner.returned if capturing]
    assert len(inside) == 1 and len(inner.returned) == graphs.warmup + 1
    assert all(y.data_ptr() != out.data_ptr() for out in inside[0])
    assert graphs.run("double", x=x + 1)["y"] is y  # replayed into the same buffer


def test_at_least_one_warm_up_run_gives_the_output_shapes(fake_cuda):
    with pytest.raises(ValueError, match="at least one warm-up run"):
        CudaGraphBackend(_CudaLabelled(), warmup=0)


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
