"""``vosrt segment``: segment a video (image folder, video file or camera) from first-frame masks."""
from __future__ import annotations

import argparse
import contextlib

from vosrt.io import IMAGE_SUFFIXES, OverlayVideoWriter
from vosrt.inputs import printable
from vosrt.pipeline import DEFAULT_FPS
from vosrt.runtime.backends import BACKENDS
from vosrt.runtime.registry import MODEL_NAMES

from .options import add_inference_options, inference_options, option_flags


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment videos: image folders, video files or cameras",
                       description="Segment the frames of --input (an image folder, a video file such as mp4/avi, or a "
                                   "camera index), starting from the label maps in --masks: one PNG for the first "
                                   "frame, or a folder of PNGs named like the frames (00000.png, 00001.png, ... for "
                                   "videos and cameras; every mask found is used, and a mask may hold only new "
                                   "objects; one a few pixels off the frame size is aligned as the official code "
                                   "aligns it, with a warning). Frames are 8-bit images. Writes palette PNG label "
                                   "maps to --output and/or an overlay video to --overlay, at the input's size and "
                                   "frame rate, only once the run is complete. Stop a camera with Ctrl-C. Several "
                                   "inputs run together, one stream each (vosrt.load_batch): repeat --input, and "
                                   "--masks, --output and --overlay once per input, in the same order.")
    p.add_argument("model", choices=MODEL_NAMES)
    p.add_argument("--weights", help="checkpoint file (default: download the official one)")
    p.add_argument("--input", "--images", dest="input", required=True, action="append",
                   help=f"image folder ({image_types()}, in name order), video file OpenCV can decode (mp4, avi, "
                        "...), or camera index (0, 1, ...); repeat for several videos at once")
    p.add_argument("--masks", required=True, action="append",
                   help="PNG label map of the first frame, or a folder of them (one per --input)")
    p.add_argument("--output", action="append",
                   help="folder for the palette PNG label maps (new or empty; not inside --input or --masks; one per "
                        "--input)")
    p.add_argument("--overlay", action="append",
                   help=f"video file ({overlay_types()}) of the frames with the masks blended in (H.264 where OpenCV "
                        "can encode it; one per --input)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --output, replacing only the label maps this run writes, and replace "
                        "an existing --overlay")
    p.add_argument("--fps", type=float, help=f"overlay frame rate when the input has none (image folder; "
                                              f"default {DEFAULT_FPS:g})")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--backend", choices=BACKENDS,
                   help="default: the one --export-dir is for (tensorrt for an engine directory, else onnxruntime), "
                        "torch without --export-dir")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda with tensorrt, else cpu)")
    p.add_argument("--export-dir", help="onnxruntime: an ONNX export (default: exported into the cache); "
                                        "tensorrt (required): a directory built by export-engine")
    p.add_argument("--no-check-files", dest="check_files", action="store_false",
                   help="do not compare the files of --export-dir with the sha256 sums of its manifest (for graphs "
                        "edited on purpose)")
    p.add_argument("--fp16", action="store_true",
                   help="torch (CUDA): fp16 autocast where the official code allows it; onnxruntime: fp16 graphs")
    p.add_argument("--amp", action="store_true", help="torch (CUDA): the official AMP, the whole step under autocast")
    p.add_argument("--cuda-graph", action="store_true",
                   help="torch or tensorrt (CUDA): replay each stage as a CUDA graph while shapes stay the same")
    p.add_argument("--server", action="append", metavar="HOST:PORT",
                   help="segment on Triton Inference Server (gRPC address; repeat for several servers, streams "
                        "placed by hashing): the model and its options are the served repository's (vosrt "
                        "export-triton); docs/serving.md")
    add_inference_options(p)
    p.set_defaults(run=run)


def image_types() -> str:
    """The image files an --input folder may hold, as the help and docs/cli.md list them: ``jpg, jpeg, ...``."""
    return ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))


def overlay_types() -> str:
    """The --overlay video files: ``.mp4, .mov, .mkv or .avi``."""
    suffixes = list(OverlayVideoWriter.CODECS)
    return ", ".join(suffixes[:-1]) + " or " + suffixes[-1]


def run(args: argparse.Namespace) -> None:
    from vosrt import io, pipeline
    from vosrt.api import backend_for, load, load_batch

    outputs, overlays = _per_input(args)
    backend = args.backend or backend_for(args.export_dir)
    options = dict(weights=args.weights, backend=backend, device=args.device or ("cuda" if backend == "tensorrt"
                                                                                  else "cpu"),
                   export_dir=args.export_dir, fp16=args.fp16, amp=args.amp, cuda_graph=args.cuda_graph,
                   check_files=args.check_files, **inference_options(args))
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(io.open_frames(path)) for path in args.input]
        if args.server:
            from vosrt.serving.client import connect

            local = [flag for flag, value in (("--weights", args.weights), ("--backend", args.backend),
                                              ("--export-dir", args.export_dir)) if value]
            local += [option_flags()[field] for field in inference_options(args)]
            if local:
                raise ValueError(f"{', '.join(local)}: the served repository fixes these (vosrt export-triton)")

            results = pipeline.segment_streams(lambda: stack.enter_context(connect(args.server, args.model)), sources,
                                               args.masks, outputs=outputs, overlays=overlays, fps=args.fps,
                                               max_frames=args.max_frames, overwrite=args.overwrite)
        elif len(sources) == 1:
            results = [pipeline.segment(lambda: load(args.model, **options), sources[0], args.masks[0],
                                        output=outputs[0], overlay=overlays[0], fps=args.fps,
                                        max_frames=args.max_frames, overwrite=args.overwrite)]
        else:
            results = pipeline.segment_streams(lambda: load_batch(args.model, **options), sources, args.masks,
                                               outputs=outputs, overlays=overlays, fps=args.fps,
                                               max_frames=args.max_frames, overwrite=args.overwrite)
    for path, result in zip(args.input, results):
        _report(result, f" of {printable(path)}" if len(results) > 1 else "")
    if len(results) > 1:
        frames, seconds = sum(r.frames for r in results), results[0].seconds
        print(f"{len(results)} streams: {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} fps "
              "in all)")


def _per_input(args: argparse.Namespace) -> tuple[list, list]:
    """--output and --overlay per --input (None where not given); ValueError unless --masks, and
    --output and --overlay where given, come once per --input."""
    inputs = len(args.input)
    for flag, values in (("--masks", args.masks), ("--output", args.output), ("--overlay", args.overlay)):
        if values is not None and len(values) != inputs:
            raise ValueError(f"{flag} given {len(values)} time(s) for {inputs} --input: give it once per --input, "
                             "in the same order")
    return args.output or [None] * inputs, args.overlay or [None] * inputs


def _report(result, which: str) -> None:
    stopped = " (stopped)" if result.stopped else ""
    print(f"segmented {result.frames} frames{which}{stopped} in {result.seconds:.1f} s "
          f"({result.frames / max(result.seconds, 1e-9):.2f} fps)")
    if result.output is not None:
        print(f"wrote {result.frames} label maps to {printable(result.output)}")
        if result.others:
            print(f"note: {len(result.others)} other files in {printable(result.output)} were left as they were "
                  f"(e.g. {printable(result.others[0])})")
    if result.overlay is not None:
        print(f"wrote the overlay video {printable(result.overlay)}")
