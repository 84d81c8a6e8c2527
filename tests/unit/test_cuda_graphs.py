"""CUDA-graph replay bookkeeping on the CPU: which calls share a graph, what is kept, what is
passed through. The capture itself is replaced by a stand-in here; tests/gpu runs the real one."""
from __future__ import annotations

import warnings

import pytest
import torch

from fakes.backends import ArithmeticBackend
from vosrt.runtime.backends import cuda_graphs
from vosrt.runtime.backends.cuda_graphs import CudaGraphBackend


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
def graphs(monkeypatch):
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


def test_a_failed_capture_runs_eagerly_and_warns_once(monkeypatch):
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
