"""The DAVIS judo clip (its frame-5 mask is 853 px wide, the frames 854) through ``session.step``
with the masks as read from disk, against the same session fed masks padded by hand as the
official ``pad_divide_by`` pads them: per-frame max |dprob|, which must be 0. Then ``vosrt eval``
of the eager predictions against the judo masks (ground truth with the same 853 px mask).

    python benchmarks/judo_alignment.py --models cutie-small,cutie-base --backends torch,onnxruntime

Seeded official-layout weights (../shared/reference/gen_weights.py, seed 1): the figures show the
alignment, not segmentation quality.
"""
from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
JUDO = SHARED / "data" / "davis-examples"
sys.path.insert(0, str(ROOT / "tests"))

from bad_inputs import official_alignment  # noqa: E402 -- the hand-made official padding, one copy


def run(session, masks: dict[str, np.ndarray], by_hand: bool) -> list[np.ndarray]:
    from vosrt import io

    frames = sorted((JUDO / "images" / "judo").glob("*.jpg"))
    outputs = []
    for index, path in enumerate(frames):
        image = io.read_rgb(path)
        mask = masks.get(path.stem)
        if mask is not None and by_hand and mask.shape != image.shape[:2]:
            mask = official_alignment(mask, image.shape[:2])
        outputs.append(session.step(image, mask, end=index == len(frames) - 1))
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cutie-small,cutie-base")
    parser.add_argument("--backends", default="torch,onnxruntime")
    args = parser.parse_args()

    import vosrt
    from vosrt import io
    from vosrt.api import build_network
    from vosrt.cli import main as cli
    from vosrt.export.onnx import export_onnx

    masks = {p.stem: io.read_label_map(p)[0] for p in sorted((JUDO / "masks" / "judo").glob("*.png"))}
    print("masks: " + ", ".join(f"{name} {m.shape[0]}x{m.shape[1]}" for name, m in masks.items()))
    generate = runpy.run_path(str(SHARED / "reference" / "gen_weights.py"))["main"]
    with tempfile.TemporaryDirectory(prefix="vosrt-judo-") as work:
        work = Path(work)
        for model in args.models.split(","):
            weights = work / f"{model}.pth"
            generate(str(SHARED / "reference" / f"{model}.layout.json"), str(weights), 1)
            for backend in args.backends.split(","):
                export_dir = None
                if backend == "onnxruntime":
                    export_dir = export_onnx(build_network(model, weights), model, work / f"{model}-onnx",
                                             checkpoint=weights, progress=lambda _: None)
                sessions = [vosrt.load(model, weights, backend=backend, export_dir=export_dir) for _ in range(2)]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    from_disk = run(sessions[0], masks, by_hand=False)
                reference = run(sessions[1], masks, by_hand=True)
                worst = [float(np.abs(a - b).max()) for a, b in zip(from_disk, reference)]
                print(f"{model} {backend}: per-frame max |dprob| " + " ".join(f"{w:.1e}" for w in worst)
                      + f"; largest {max(worst):.1e}; warnings: {[str(w.message) for w in caught]}")
                if model == args.models.split(",")[0] and backend == "torch":
                    prediction = work / "pred"
                    prediction.mkdir()
                    for path, prob in zip(sorted((JUDO / "images" / "judo").glob("*.jpg")), from_disk):
                        io.write_label_map(prediction / f"{path.stem}.png", sessions[0].to_mask(prob))
                    print(f"vosrt eval --pred PRED --gt {JUDO / 'masks' / 'judo'} --all-frames:")
                    cli(["eval", "--pred", str(prediction), "--gt", str(JUDO / "masks" / "judo"), "--all-frames"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
