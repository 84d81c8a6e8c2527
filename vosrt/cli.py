"""Command line: ``vosrt segment | export | inspect | verify`` and ``export-engine``.

Errors a user can fix (bad paths, wrong masks, wrong checkpoints, no GPU) print one line
and exit with status 2; they never show a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vosrt import io
from vosrt import weights as wts
from vosrt.api import BACKENDS, MODELS, load
from vosrt.runtime.session import InferenceConfig

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    defaults = InferenceConfig()
    group = parser.add_argument_group("memory options (official defaults)")
    group.add_argument("--mem-every", type=int, default=defaults.mem_every, help="memorise every N frames")
    group.add_argument("--max-mem-frames", type=int, default=defaults.max_mem_frames,
                       help="working memory size in frames, the permanent first frame included")
    group.add_argument("--top-k", type=int, default=defaults.top_k, help="memory tokens read per pixel")
    group.add_argument("--stagger-updates", type=int, default=defaults.stagger_updates,
                       help="sensory updates between two memory frames")
    group.add_argument("--chunk-size", type=int, default=defaults.chunk_size,
                       help="objects read from memory together (-1: all)")
    group.add_argument("--max-internal-size", type=int, default=defaults.max_internal_size,
                       help="resize so the shorter side is at most this (-1: keep size)")


def _inference_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in InferenceConfig.__dataclass_fields__}


def _segment_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment a video given as an image folder",
                       description="Segment the frames of --images, starting from the label maps in --masks "
                                   "(PNG files named like the frames; every mask found is used, and a mask may "
                                   "hold only new objects). Writes palette PNG label maps to --output.")
    p.add_argument("model", choices=MODELS)
    p.add_argument("--weights", help="checkpoint file (default: download the official one)")
    p.add_argument("--images", required=True, help="folder of frames (jpg/png), in name order")
    p.add_argument("--masks", required=True, help="folder of PNG label maps named like the frames")
    p.add_argument("--output", required=True, help="folder for the output label maps")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    _add_inference_options(p)
    p.set_defaults(run=run_segment)


def run_segment(args: argparse.Namespace) -> None:
    frames = io.list_frames(args.images)
    masks_dir = Path(args.masks)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"mask folder not found: {masks_dir}")
    masks = {p.stem: p for p in masks_dir.glob("*.png")}
    if frames[0].stem not in masks:
        raise ValueError(f"no mask for the first frame: expected {masks_dir / (frames[0].stem + '.png')}")
    session = load(args.model, args.weights, backend=args.backend, device=args.device, **_inference_options(args))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    palette = None
    with tqdm(frames, unit="frame", desc="segment") as bar:
        for index, frame in enumerate(bar):
            image = io.read_rgb(frame)
            mask = None
            if frame.stem in masks:
                mask, mask_palette = io.read_label_map(masks[frame.stem])
                mask = _fit_mask(mask, image.shape[:2], masks[frame.stem], bar)
                palette = palette or mask_palette
            prob = session.step(image, mask, end=index == len(frames) - 1)
            io.write_label_map(output / f"{frame.stem}.png", session.to_mask(prob), palette)
    print(f"wrote {len(frames)} label maps to {output}")


def _fit_mask(mask: np.ndarray, size: tuple[int, int], path: Path, bar: tqdm) -> np.ndarray:
    """Masks a pixel or so off the frame size (as in some DAVIS annotations) are resized with
    nearest neighbour, as the official reader does; larger mismatches are errors."""
    if mask.shape == size:
        return mask
    if any(abs(m - s) > max(2, s // 100) for m, s in zip(mask.shape, size)):
        raise ValueError(f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but the frame is {size[0]}x{size[1]}")
    bar.write(f"note: resized mask {path.name} from {mask.shape[0]}x{mask.shape[1]} to {size[0]}x{size[1]}")
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size[::-1], Image.NEAREST)).astype(np.int64)


def _add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=MODELS)
    p.add_argument("--weights", help="checkpoint file (default: download the official one)")
    p.add_argument("--format", choices=("onnx", "engine"), default="engine",
                   help="engine: ONNX graphs then TensorRT engines (needs TensorRT and an NVIDIA GPU); onnx: graphs only")
    p.add_argument("--fp16", action="store_true", help="fp16 graphs (similarity, softmax and normalisations stay fp32)")
    p.add_argument("--output", help="output directory (default: ./<model>-<precision>)")
    p.add_argument("--max-mem-frames", type=int, default=InferenceConfig().max_mem_frames,
                   help="memory capacity in frames recorded for the runtime")
    p.add_argument("--top-k", type=int, default=InferenceConfig().top_k, help="top-k of the memory readout")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from vosrt.api import build_model
    from vosrt.export.onnx_export import export_onnx

    precision = "fp16" if args.fp16 else "fp32"
    output = Path(args.output or f"{args.model}-{precision}")
    model = build_model(args.model, args.weights)
    checkpoint = wts.checkpoint_for(args.model, args.weights)
    export_onnx(model, args.model, output, checkpoint=checkpoint, top_k=args.top_k,
                max_mem_frames=args.max_mem_frames, fp16=args.fp16, opset=args.opset,
                progress=lambda line: print(line, flush=True))
    print(f"wrote ONNX graphs and manifest.json to {output}")
    if args.format == "engine":
        _engines_need_target(output)


def _engines_need_target(onnx_dir: Path) -> None:
    try:
        import tensorrt  # noqa: F401
        import torch

        ready = torch.cuda.is_available()
    except ImportError:
        ready = False
    commands = "\n".join(f"  trtexec --onnx={onnx_dir / g}.onnx --saveEngine={onnx_dir / g}.engine"
                          for g in ("image_encoder", "mask_encoder", "memory_readout", "mask_decoder"))
    reason = "the TensorRT engine builder is not part of this version yet" if ready else \
        "TensorRT and an NVIDIA GPU are needed to build engines, and this machine lacks them"
    raise RuntimeError(f"{reason}. TensorRT engines must be built on the target GPU: copy {onnx_dir} there and "
                       f"run\n{commands}\n(use --format onnx to stop after the ONNX graphs without this error)")


def _inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print an export directory's manifest and graph inputs/outputs")
    p.add_argument("directory")
    p.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> None:
    from vosrt.export.onnx_export import read_manifest

    manifest = read_manifest(args.directory)
    print(f"{manifest['model']}  {manifest['precision']}  opset {manifest['opset']}  top_k {manifest['top_k']}  "
          f"max_mem_frames {manifest['max_mem_frames']}  vosrt {manifest['vosrt_version']}")
    if manifest.get("checkpoint"):
        print(f"checkpoint {manifest['checkpoint']['path']} sha256 {manifest['checkpoint']['sha256'][:16]}...")
    for name, graph in manifest["graphs"].items():
        print(f"\n{name} ({graph['file']})")
        for kind in ("inputs", "outputs"):
            for t in graph[kind]:
                print(f"  {kind[:-1]:6} {t['name']:18} {t['dtype']:8} [{', '.join(map(str, t['shape']))}]")


def _verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="compare each ONNX graph with the eager model (ONNX Runtime, Polygraphy)")
    p.add_argument("directory")
    p.add_argument("--weights", help="the checkpoint the graphs were exported from (default: the manifest's)")
    p.add_argument("--rel-tol", type=float, default=1e-4, help="max |error| / max |eager output| allowed")
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    from polygraphy.logger import G_LOGGER

    from vosrt.api import build_model
    from vosrt.export.onnx_export import read_manifest
    from vosrt.export.verify import compare_with_eager

    G_LOGGER.module_severity = G_LOGGER.ERROR
    manifest = read_manifest(args.directory)
    weights = args.weights or (manifest.get("checkpoint") or {}).get("path")
    checks = compare_with_eager(args.directory, build_model(manifest["model"], weights), rel_tol=args.rel_tol)
    print(f"{'graph':16} {'size':9} {'K':>2} {'output':14} {'max|err|':>9} {'rel':>9}")
    for c in checks:
        print(f"{c.graph:16} {c.size[0]}x{c.size[1]:<5} {c.num_objects:>2} {c.output:14} "
              f"{c.max_abs_error:9.2e} {c.relative_error:9.2e} {'ok' if c.passed else 'FAIL'}")
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ValueError(f"{len(failed)} of {len(checks)} outputs exceed rel-tol {args.rel_tol}")
    print(f"all {len(checks)} outputs within {args.rel_tol} of the eager model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vosrt", description="Video object segmentation for deployment.")
    sub = parser.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
    _add_export_arguments(sub.add_parser("export", help="export ONNX graphs (and engines): same as export-engine"))
    _inspect_parser(sub)
    _verify_parser(sub)
    return parser


def export_engine_main(argv: list[str] | None = None) -> int:
    """``export-engine MODEL ...``: the same as ``vosrt export MODEL ...``."""
    return main(["export", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as err:
        print(f"vosrt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
