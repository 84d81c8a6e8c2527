"""The torch backend's GPU modes: CUDA-graph replay, fp16 autocast, the official AMP.

All of these need an NVIDIA GPU and skip without one; the CPU errors for these options are
tested in test_engine.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vosrt
from helpers import GOLDEN_CONFIG, assert_golden, davis_label_maps, mean_iou, run_golden_clip
from vosrt.runtime.cuda_graphs import CudaGraphs

JOINTFORMER_GOLDEN_CONFIG = dict(mem_every=3, max_mem_frames=2, top_k=30)  # ../shared/reference/README.md

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def test_cuda_graphs_reproduce_official_outputs(seeded_weights):
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), device="cuda", cuda_graph=True,
                         **GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, "cutie-small"), ignore_ties=True)
    captured = session.graphs.captured
    assert captured and all(c is not None for c in captured.values())  # every stage ran as a graph


def test_jointformer_cuda_graphs_reproduce_official_outputs(seeded_weights):
    session = vosrt.load("jointformer", weights=seeded_weights("jointformer"), device="cuda", cuda_graph=True,
                         **JOINTFORMER_GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, "jointformer", num_frames=20))
    assert session.graphs.captured and all(c is not None for c in session.graphs.captured.values())


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["judo", "bike"])
@pytest.mark.parametrize("mode", [dict(fp16=True, cuda_graph=True), dict(amp=True)])
def test_fp16_modes_match_fp32_eager_on_real_clips(seeded_weights, clip, mode):
    weights = seeded_weights("cutie-small")
    reference = davis_label_maps(vosrt.load("cutie-small", weights=weights, device="cuda"), clip)
    fast = davis_label_maps(vosrt.load("cutie-small", weights=weights, device="cuda", **mode), clip)
    ious = [mean_iou(a, b) for a, b in zip(fast, reference)]
    print(f"{clip} {mode}: per-frame mIoU vs fp32 eager min {min(ious):.4f} mean {np.mean(ious):.4f}")
    assert min(ious) >= 0.97


class _Doubler:
    """A minimal graphs object: ``encode_image`` doubles; ``host_sync`` makes capture fail;
    ``read`` adds a memory tensor (its second argument, read in place) to its first."""

    device = torch.device("cuda")
    num_queries = 1

    def __init__(self, host_sync: bool):
        self.host_sync = host_sync
        self.calls = 0

    def encode_image(self, image):
        self.calls += 1
        if self.host_sync:
            float(image.sum())  # a device-to-host copy: not allowed while capturing
        return image * 2

    def read(self, x, memory):
        self.calls += 1
        return x + memory


STAGES = {"encode_image": (), "read": (1,)}


def test_memory_inputs_are_read_in_place_and_keyed_by_address():
    graphs = CudaGraphs(_Doubler(host_sync=False), STAGES)
    x, memory = torch.rand(4, device="cuda"), torch.rand(4, device="cuda")
    torch.testing.assert_close(graphs.read(x, memory), x + memory)
    memory.add_(1)  # the session updates its memory buffers in place between frames
    torch.testing.assert_close(graphs.read(x, memory), x + memory)  # replayed, no copy of memory
    (captured,) = graphs.captured.values()
    assert list(captured.copied) == [0]
    other = memory.clone()  # new buffers (objects added): a new graph
    torch.testing.assert_close(graphs.read(x, other), x + other)
    assert len(graphs.captured) == 2


def test_shapes_get_their_own_graph_and_replay():
    graphs = CudaGraphs(_Doubler(host_sync=False), STAGES)
    for shape in ((2, 3), (2, 3), (4, 5), (2, 3)):
        x = torch.rand(shape, device="cuda")
        torch.testing.assert_close(graphs.encode_image(x), x * 2)
    assert len(graphs.captured) == 2
    assert graphs.graphs.calls == 2 * (graphs.warmup + 1)  # warm-up and capture only; replays skip Python


def test_failed_capture_falls_back_to_eager():
    graphs = CudaGraphs(_Doubler(host_sync=True), STAGES)
    x = torch.rand(3, device="cuda")
    with pytest.warns(RuntimeWarning, match="CUDA-graph capture of encode_image failed, running it eagerly"):
        torch.testing.assert_close(graphs.encode_image(x), x * 2)
    torch.testing.assert_close(graphs.encode_image(x + 1), (x + 1) * 2)  # eager now, no second attempt
    assert list(graphs.captured.values()) == [None]
