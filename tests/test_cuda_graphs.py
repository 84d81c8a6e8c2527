"""CUDA-graph replay bookkeeping on the CPU: which calls share a graph, what is kept, what is
passed through. The capture itself is replaced by a stand-in here; test_gpu_modes.py runs the
real one on a GPU."""
from __future__ import annotations

import warnings

import pytest
import torch

from vosrt.runtime import cuda_graphs
from vosrt.runtime.cuda_graphs import CudaGraphs


class _FakeCapture:
    """Stands in for a captured graph: records the inputs it copies and replays by calling the stage."""

    def __init__(self, fn, inputs, in_place, kwargs, warmup):
        self.fn, self.kwargs = fn, kwargs
        self.copied = [i for i in range(len(inputs)) if i not in in_place]

    def __call__(self, inputs):
        return self.fn(*inputs, **self.kwargs)


class _Graphs:
    device = torch.device("cuda")  # CudaGraphs checks the device; nothing runs on it here
    num_queries = 16

    def encode_image(self, image):
        return image * 2

    def read(self, x, memory):
        return x + memory

    def initial_summary(self, n):
        return torch.zeros(n)


STAGES = {"encode_image": (), "read": (1,)}


@pytest.fixture
def graphs(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "_Captured", _FakeCapture)
    return CudaGraphs(_Graphs(), STAGES, max_graphs=3)


def test_other_attributes_and_methods_are_the_wrapped_graphs_own(graphs):
    assert graphs.num_queries == 16 and graphs.device == torch.device("cuda")
    assert graphs.initial_summary(2).shape == (2,) and not graphs.captured


def test_memory_is_keyed_by_address_and_not_copied(graphs):
    x, memory = torch.rand(4), torch.rand(4)
    torch.testing.assert_close(graphs.read(x, memory), x + memory)
    y = torch.rand(4)
    torch.testing.assert_close(graphs.read(y, memory), y + memory)
    assert len(graphs.captured) == 1  # other values of the copied input, same memory: one graph
    (captured,) = graphs.captured.values()
    assert captured.copied == [0]
    graphs.read(x, memory.clone())  # other buffers of the same shape: a graph of their own
    graphs.read(x, memory[:1].expand(4))  # same address and shape, other strides
    assert len(graphs.captured) == 3


def test_least_recently_used_graph_goes_first(graphs):
    for n in (2, 3, 4, 2, 5):
        graphs.encode_image(torch.rand(n))
    assert [key[1][0][0] for key in graphs.captured] == [(4,), (2,), (5,)]


def test_a_failed_capture_runs_eagerly_and_warns_once(monkeypatch):
    def fail(*args):
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(cuda_graphs, "_Captured", fail)
    graphs = CudaGraphs(_Graphs(), STAGES)
    x = torch.rand(3)
    with pytest.warns(RuntimeWarning, match="capture of encode_image failed, running it eagerly: operation not"):
        torch.testing.assert_close(graphs.encode_image(x), x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        torch.testing.assert_close(graphs.encode_image(x + 1), (x + 1) * 2)
    assert list(graphs.captured.values()) == [None]


def test_cpu_graphs_are_refused():
    cpu = _Graphs()
    cpu.device = torch.device("cpu")
    with pytest.raises(ValueError, match="cuda_graph=True needs device='cuda'"):
        CudaGraphs(cpu, STAGES)
