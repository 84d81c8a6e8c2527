"""Several streams on the GPU: batched fp16 + CUDA graphs against independent sessions of the same
mode, and outputs that stay on the device without synchronising. Skipped without an NVIDIA GPU."""
from __future__ import annotations

import pytest
import torch

import vosrt
from helpers import GPU_MAX_DPROB
from stream_clips import max_dprob_per_stream, run_batched, run_independent, shapes_clip, stream_schedule
from vosrt.runtime.stage_batcher import StageBatcher
from vosrt.runtime.session import step_sessions

pytestmark = pytest.mark.gpu

FAST = dict(device="cuda", fp16=True, cuda_graph=True, mem_every=2, max_mem_frames=3, max_internal_size=240)


def test_batched_fp16_cuda_graph_streams_match_independent_sessions(seeded_weights):
    kwargs = dict(weights=seeded_weights("cutie-small"), **FAST)
    schedule = stream_schedule(4, 9)
    independent = run_independent(lambda: vosrt.load("cutie-small", **kwargs), schedule)
    batch = vosrt.load_batch("cutie-small", **kwargs)
    worst = max_dprob_per_stream(run_batched(batch, schedule), independent)
    print(f"fp16 + CUDA graphs, 4 streams: max |dprob| per stream {worst}")
    assert max(worst.values()) <= GPU_MAX_DPROB, worst
    assert all(graph is not None for graph in batch.backend.captured.values())  # every stage ran as a graph


def test_tensor_output_and_labels_do_not_synchronise(seeded_weights):
    """What ``step(output="tensor")`` and ``to_mask`` of a tensor add after the stages waits for
    nothing (the frame's upload from pageable host memory, before them, does)."""
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), **FAST)
    clip = shapes_clip(3)
    for image, mask, objects in clip[:2]:
        session.step(image, mask, objects)
    frame = session._prepare(*clip[2], end=False)
    session._begin(frame)
    [prob] = step_sessions([(session, frame)], StageBatcher(session.backend))
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        output = session._finish(frame, prob, "tensor")
        labels = session.to_mask(output)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert output.is_cuda and labels.is_cuda and labels.dtype == torch.uint8
    assert labels.shape == output.shape[1:]
