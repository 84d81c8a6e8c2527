"""fp16 modes against fp32, stage by stage on the same inputs.

With random weights most pixels' two best labels are near ties, so over a clip an fp16 session
drifts away from the fp32 one (cutie-small's golden clip: worst-frame mIoU about 0.2 for fp16
graphs and for eager fp16 autocast, docs/parity.md): agreement of whole clips cannot be asked for. Fed
the *same* inputs, though, each stage differs from fp32 by fp16 rounding only, and that is
bounded. The calls of an fp32 session on a real clip are recorded (inputs and outputs), then
each is run again through the candidate; per output the errors are relative to the fp32
output's scale:

- ``max``: the largest |error| of a call over max |fp32 output|, the worst call;
- ``mean``: mean |error| over mean |fp32 output|, the worst call.

Stages that select a top-K (``StageSpec.selects_top_k``) may pick another token where two scores
are within rounding, which moves single values far: only their ``mean`` is bounded.
:data:`FP16_BOUNDS` are about 4x the largest errors measured on the CPU under fp16 autocast
(cutie-small, seed-1 weights, 10 judo frames at 240x427, 3 objects in 3 buckets: max 1.3e-2
(the decoder's sensory), mean 8.5e-3 (the readout)); a stage run in the wrong precision or on
the wrong inputs is off by far more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from vosrt.runtime.backends.base import Backend, BackendWrapper
from vosrt.runtime.stages import StageSpec

FP16_BOUNDS = {"max": 5e-2, "mean": 2.5e-2}

Call = tuple[StageSpec, list[torch.Tensor], list[torch.Tensor]]  # stage, inputs, outputs
Runner = Callable[[StageSpec, list[torch.Tensor]], list[torch.Tensor]]


class RecordingBackend(BackendWrapper):
    """``inner``, keeping a copy of the inputs and outputs of every stage call in ``calls``."""

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.calls: list[Call] = []

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]):
        copies = [x.clone() for x in inputs]
        outputs = self.inner._run(stage, inputs)
        self.calls.append((stage, copies, [x.clone() for x in outputs]))
        return outputs


def davis_frames(clip: str, plan: list[tuple[int, list[int] | None]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(image, label map of ``objects`` or None) for each ``(frame index, objects or None)`` of ``plan``
    on the DAVIS example ``clip`` (masks a pixel off the frame size as read: the session aligns them)."""
    from helpers import DAVIS
    from vosrt import io

    frames = []
    for index, objects in plan:
        image = io.read_rgb(DAVIS / "images" / clip / f"{index:05d}.jpg")
        mask = None
        if objects is not None:
            labels, _ = io.read_label_map(DAVIS / "masks" / clip / f"{index:05d}.png")
            mask = np.where(np.isin(labels, objects), labels, 0)
        frames.append((image, mask))
    return frames


def record_calls(session, frames: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> list[Call]:
    """The stage calls ``session`` makes on ``frames`` ((image, label map or None) pairs), with their outputs."""
    recorder = session.backend = RecordingBackend(session.backend)
    for image, mask in frames:
        session.step(image, mask)
    session.backend = recorder.inner
    return recorder.calls


@dataclass
class OutputError:
    stage: StageSpec
    output: str
    max: float = 0.0
    mean: float = 0.0

    def within(self, bounds: dict[str, float]) -> bool:
        return self.mean <= bounds["mean"] and (self.stage.selects_top_k or self.max <= bounds["max"])


def stage_errors(candidate: Runner, calls: list[Call]) -> list[OutputError]:
    """Per stage output, the worst relative errors of ``candidate(stage, inputs)`` against the recorded outputs."""
    errors: dict[tuple[str, str], OutputError] = {}
    with torch.inference_mode():
        for stage, inputs, recorded in calls:
            for name, expected, actual in zip(stage.output_names, recorded, candidate(stage, inputs)):
                expected, diff = expected.float(), (actual.float() - expected.float()).abs()
                error = errors.setdefault((stage.name, name), OutputError(stage, name))
                error.max = max(error.max, float(diff.max() / expected.abs().max().clamp_min(1e-12)))
                error.mean = max(error.mean, float(diff.mean() / expected.abs().mean().clamp_min(1e-12)))
    return list(errors.values())


def fp16_torch_backend(model: str, session) -> Backend:
    """The torch fp16 mode (``vosrt.load(fp16=True)``: autocast in every stage, the official fp32
    regions kept) on the network of ``session``, an fp32 torch session of ``model``."""
    from vosrt.runtime.backends.torch import TorchBackend
    from vosrt.runtime.registry import model_spec

    return TorchBackend(model_spec(model).family, session.backend.network, session.config.export_settings(),
                        session.backend.device, fp16=True)


def assert_fp16_noise(errors: list[OutputError], bounds: dict[str, float] = FP16_BOUNDS) -> None:
    table = "\n".join(f"  {e.stage.name}/{e.output}: max {e.max:.2e} mean {e.mean:.2e}" for e in errors)
    print(f"fp16 vs fp32 per stage, relative to the fp32 scale:\n{table}")
    outside = [f"{e.stage.name}/{e.output}" for e in errors if not e.within(bounds)]
    assert errors and not outside, f"outside {bounds}: {outside}\n{table}"

