"""vosrt against the official Cutie code, side by side in one process, frame by frame.

The official implementation is not part of vosrt: clone it yourself (``git clone
https://github.com/hkchengrex/Cutie``) and install what its inference needs beside vosrt
(``pip install hydra-core omegaconf einops``). This script imports it from ``--official-repo``.

Three contenders run the same clip with the same weights: the official ``InferenceCore``, vosrt's
eager torch session and vosrt's ONNX Runtime session (graphs exported into a temporary folder).
Each frame is given to all three in turn (the order rotates every frame), so that a change in the
machine's load hits them alike; the report gives the median seconds per frame of each, the
ratios official / vosrt, and the largest |dprob| between vosrt and the official outputs.

``--mode fill``: the clip once, the memory filling up (what a user sees on a short clip).
``--mode full``: the clip played back and forth until the memory has been full for ``--frames``
frames; only those are timed. Run it on a quiet machine::

    python benchmarks/versus_official.py --official-repo ../Cutie --model cutie-small --mode fill
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vosrt
from vosrt.api import build_network
from vosrt.export.onnx import export_onnx
from vosrt.io import list_frames, read_label_map, read_rgb

SHARED = Path(__file__).resolve().parents[2] / "shared"
JUDO = SHARED / "data" / "davis-examples"
CONTENDERS = ("official", "vosrt-torch", "vosrt-onnxruntime")


def official_processor(repo: Path, variant: str, weights: Path):
    """The official ``InferenceCore`` over the official ``CUTIE`` network with ``weights``, with the
    DAVIS-2017 evaluation settings (what ``eval_vos.py`` runs)."""
    sys.path.insert(0, str(repo))
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from cutie.inference.inference_core import InferenceCore
    from cutie.inference.utils.args_utils import get_dataset_cfg
    from cutie.model.cutie import CUTIE
    from cutie.model.utils import resnet

    # The constructor fetches ImageNet weights that the checkpoint overwrites anyway: skip the download.
    for arch in ("resnet18", "resnet50"):
        build = getattr(resnet, arch)
        setattr(resnet, arch, lambda pretrained=True, _build=build, **kwargs: _build(pretrained=False, **kwargs))

    with initialize_config_dir(version_base="1.3.2", config_dir=str(repo / "cutie" / "config")):
        cfg = compose(config_name="eval_config", overrides=[f"model={variant}"])
    with open_dict(cfg):
        cfg["weights"] = str(weights)
    get_dataset_cfg(cfg)
    network = CUTIE(cfg).eval()
    network.load_weights(torch.load(weights, map_location="cpu"))
    return InferenceCore(network, cfg=cfg)


def clip(mode: str, frames: int, warm: int) -> list[int]:
    """Indices of the judo frames to play: once (``fill``), or back and forth for ``warm + frames``."""
    count = len(list_frames(JUDO / "images" / "judo"))
    if mode == "fill":
        return list(range(count))
    cycle = list(range(count)) + list(range(count - 2, 0, -1))
    return [cycle[i % len(cycle)] for i in range(warm + frames)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-repo", type=Path, required=True)
    p.add_argument("--model", default="cutie-small", choices=("cutie-small", "cutie-base"))
    p.add_argument("--weights", type=Path, help="checkpoint (default: gen_weights.py seed 1 of the official layout)")
    p.add_argument("--mode", choices=("fill", "full"), default="fill")
    p.add_argument("--frames", type=int, default=12, help="timed frames with --mode full")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the report here too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vosrt-vs-official-") as work:
        weights = args.weights or _seeded_weights(args.model, Path(work))
        report = run(args, weights, Path(work))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _seeded_weights(model: str, folder: Path) -> Path:
    import runpy

    path = folder / f"{model}-seed1.pth"
    runpy.run_path(str(SHARED / "reference" / "gen_weights.py"))["main"](
        str(SHARED / "reference" / f"{model}.layout.json"), str(path), 1)
    return path


def run(args, weights: Path, work: Path) -> dict:
    official = official_processor(args.official_repo.resolve(), args.model.split("-")[1], weights)
    export_dir = export_onnx(build_network(args.model, weights), args.model, work / "onnx", progress=lambda _: None)
    sessions = {"vosrt-torch": vosrt.load(args.model, weights),
                "vosrt-onnxruntime": vosrt.load(args.model, weights, backend="onnxruntime", export_dir=export_dir)}
    config = sessions["vosrt-torch"].config
    warm = 1 + (config.max_mem_frames - 1) * config.mem_every
    order = clip(args.mode, args.frames, warm)
    images = {i: read_rgb(p) for i, p in enumerate(list_frames(JUDO / "images" / "judo"))}
    first_mask, _ = read_label_map(JUDO / "masks" / "judo" / "00000.png")
    seconds = {name: [] for name in CONTENDERS}
    dprob = {name: 0.0 for name in sessions}
    load = os.getloadavg()[0]
    for step, index in enumerate(order):
        mask = first_mask if step == 0 else None
        outputs = {}
        for turn in range(len(CONTENDERS)):
            name = CONTENDERS[(step + turn) % len(CONTENDERS)]
            start = time.perf_counter()
            outputs[name] = _step(name, official, sessions, images[index], mask)
            elapsed = time.perf_counter() - start
            if args.mode == "fill" or step >= warm:
                seconds[name].append(elapsed)
        for name in sessions:
            dprob[name] = max(dprob[name], float(np.abs(outputs[name] - outputs["official"]).max()))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {"model": args.model, "mode": args.mode, "frames_timed": len(seconds["official"]),
            "threads": args.threads, "load_average_1min": {"start": load, "end": os.getloadavg()[0]},
            "median_s_per_frame": median,
            "speed_vs_official": {name: median["official"] / median[name] for name in sessions},
            "max_abs_dprob_vs_official": dprob}


@torch.inference_mode()
def _step(name: str, official, sessions: dict, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if name == "official":
        image_t = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        mask_t = None if mask is None else torch.from_numpy(mask.astype(np.int64))
        objects = None if mask is None else [int(o) for o in np.unique(mask) if o]
        return official.step(image_t, mask_t, objects=objects).float().numpy()
    return sessions[name].step(image, mask)


if __name__ == "__main__":
    sys.exit(main())
