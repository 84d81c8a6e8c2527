"""Command line: ``vosrt segment | bench | eval | export | inspect | verify`` and ``export-engine``.

Errors a user can fix (bad paths, wrong masks, wrong checkpoints, no GPU) print one line
and exit with status 2; they never show a traceback.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Collection
from pathlib import Path

from vosrt import bench, evaluate, io, pipeline
from vosrt import weights as wts
from vosrt.api import BACKENDS, CONFIG_TYPES, MODELS, load
from vosrt.models.jointformer import TopKConfig
from vosrt.models.jointformer.model import TOPK_BLOCKS, TOPK_RANGES
from vosrt.runtime.jointformer_session import JointFormerConfig
from vosrt.runtime.session import InferenceConfig

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


# The models' inference settings as options: (flag, field of the config dataclasses in
# vosrt.api.CONFIG_TYPES, argparse keywords). Defaults are the dataclasses' own (official) ones.
_LONG_TERM_SIZES = (("max_mem_frames", "working memory frames with long-term memory"),
                    ("min_mem_frames", "working memory frames kept after a consolidation"),
                    ("num_prototypes", "long-term prototypes per consolidation"),
                    ("max_num_tokens", "long-term memory size in tokens"),
                    ("buffer_tokens", "long-term tokens freed beyond the next prototypes when full"))
INFERENCE_OPTIONS = (
    ("--mem-every", "mem_every", dict(type=int, help="memorise every N frames")),
    ("--max-mem-frames", "max_mem_frames",
     dict(type=int, help="working memory size in frames, the permanent first frame included")),
    ("--top-k", "top_k", dict(type=int, help="memory tokens read per pixel (jointformer: per token)")),
    ("--max-internal-size", "max_internal_size",
     dict(type=int, help="resize so the shorter side is at most this (-1: keep size)")),
    ("--stagger-updates", "stagger_updates", dict(type=int, help="sensory updates between two memory frames")),
    ("--chunk-size", "chunk_size", dict(type=int, help="objects read from memory together (-1: all)")),
    ("--use-long-term", "use_long_term",
     dict(action="store_true", help="long-term memory (official 'generic' setting) for long videos; bounded memory")),
    *((f"--long-term-{name.replace('_', '-')}", f"long_term_{name}", dict(type=int, help=help_text))
      for name, help_text in _LONG_TERM_SIZES),
    ("--no-long-term-usage", "long_term_count_usage",
     dict(action="store_false", help="do not count the usage of long-term tokens (eviction then keeps the newest)")),
    ("--no-include-last", "include_last",
     dict(action="store_false", help="do not keep the last processed frame as a reference")),
    ("--topk-range", "topk_range", dict(choices=TOPK_RANGES, help="top-K over all reference tokens or per frame")),
    ("--topk-block", "topk_block", dict(choices=TOPK_BLOCKS, help="the joint blocks that apply the top-K filter")),
    ("--topk-clstoken", "topk_clstoken",
     dict(action="store_true", help="top-K filter on the compressed-memory token's attention too")),
)
TOPK_OPTIONS = tuple(f for f in TopKConfig.__dataclass_fields__ if f != "top_k")  # JointFormer's, fixed at export
_FLAGS = {field: flag for flag, field, _ in INFERENCE_OPTIONS}


def _add_inference_options(parser: argparse.ArgumentParser, fields: Collection[str] = tuple(_FLAGS)) -> None:
    """The :data:`INFERENCE_OPTIONS` of ``fields`` as options, each marked with the models that take it.
    An option not given is absent from the parsed arguments: the model's default applies."""
    group = parser.add_argument_group("memory options (default: the model's official setting)",
                                      argument_default=argparse.SUPPRESS)
    for flag, field, keywords in INFERENCE_OPTIONS:
        if field in fields:
            models = [name for name, config in CONFIG_TYPES.items() if field in config.__dataclass_fields__]
            families = dict.fromkeys(name.split("-")[0] for name in models)  # cutie-small -> cutie
            scope = "" if len(models) == len(MODELS) else f" [{', '.join(families)} only]"
            group.add_argument(flag, dest=field, **keywords | {"help": keywords["help"] + scope})


def _inference_options(args: argparse.Namespace) -> dict:
    """The inference options given for ``args.model``; ValueError naming those it does not take."""
    given = {field: value for field, value in vars(args).items() if field in _FLAGS}
    foreign = [_FLAGS[field] for field in given if field not in CONFIG_TYPES[args.model].__dataclass_fields__]
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not an option of {args.model}")
    return given


def _segment_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment a video: image folder, video file or camera",
                       description="Segment the frames of --input (an image folder, a video file such as mp4/avi, or a "
                                   "camera index), starting from the label maps in --masks: one PNG for the first "
                                   "frame, or a folder of PNGs named like the frames (00000.png, 00001.png, ... for "
                                   "videos and cameras; every mask found is used, and a mask may hold only new "
                                   "objects). Writes palette PNG label maps to --output and/or an overlay video to "
                                   "--overlay, at the input's size and frame rate. Stop a camera with Ctrl-C.")
    p.add_argument("model", choices=MODELS)
    p.add_argument("--weights", help="checkpoint file (default: download the official one)")
    p.add_argument("--input", "--images", dest="input", required=True,
                   help="image folder (jpg/png, in name order), video file, or camera index (0, 1, ...)")
    p.add_argument("--masks", required=True, help="PNG label map of the first frame, or a folder of them")
    p.add_argument("--output", help="folder for the palette PNG label maps")
    p.add_argument("--overlay", help="video file (.mp4/.avi) of the frames with the masks blended in")
    p.add_argument("--fps", type=float, help=f"overlay frame rate when the input has none (image folder; "
                                              f"default {pipeline.DEFAULT_FPS:g})")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--export-dir", help="onnxruntime: an ONNX export (default: exported into the cache); "
                                        "tensorrt (required): a directory built by export-engine")
    p.add_argument("--fp16", action="store_true",
                   help="torch (CUDA): fp16 autocast where the official code allows it; onnxruntime: fp16 graphs")
    p.add_argument("--amp", action="store_true", help="torch (CUDA): the official AMP, the whole step under autocast")
    p.add_argument("--cuda-graph", action="store_true",
                   help="torch or tensorrt (CUDA): replay each stage as a CUDA graph while shapes stay the same")
    _add_inference_options(p)
    p.set_defaults(run=run_segment)


def run_segment(args: argparse.Namespace) -> None:
    options = _inference_options(args)

    def make_session():
        return load(args.model, args.weights, backend=args.backend, device=args.device, export_dir=args.export_dir,
                    fp16=args.fp16, amp=args.amp, cuda_graph=args.cuda_graph, **options)

    with io.open_frames(args.input) as source:
        result = pipeline.segment(make_session, source, args.masks, output=args.output, overlay=args.overlay,
                                  fps=args.fps, max_frames=args.max_frames)
    stopped = " (stopped)" if result.stopped else ""
    print(f"segmented {result.frames} frames{stopped} in {result.seconds:.1f} s "
          f"({result.frames / max(result.seconds, 1e-9):.2f} fps)")
    if result.output is not None:
        print(f"wrote {result.frames} label maps to {result.output}")
    if result.overlay is not None:
        print(f"wrote the overlay video {result.overlay}")


def _add_export_arguments(p: argparse.ArgumentParser) -> None:
    from vosrt.export import engine

    p.add_argument("model", nargs="?", choices=MODELS, help="the model to export (not with --from-onnx)")
    p.add_argument("--weights", help="checkpoint file (default: download the official one)")
    p.add_argument("--format", choices=("onnx", "engine"), default="engine",
                   help="engine: ONNX graphs, then TensorRT engines in <output>/tensorrt (needs TensorRT and an "
                        "NVIDIA GPU; without them the ONNX graphs are kept and the trtexec commands printed); "
                        "onnx: graphs only")
    p.add_argument("--fp16", action="store_true", help="fp16 graphs (similarity, softmax and normalisations stay fp32)")
    p.add_argument("--custom-ops", action="store_true",
                   help="export Cutie's top-k readout as one vosrt::TopKReadout node, JointFormer's top-K filtered "
                        "joint attention as one vosrt::TopKJointAttention node per block (ONNX Runtime: "
                        "onnxruntime-extensions on the CPU; TensorRT: the Triton kernels as plugins) instead of "
                        "standard ONNX ops")
    p.add_argument("--output", help="output directory (default: ./<model>-<precision>; with --from-onnx: the engine "
                                    "directory, default DIR/tensorrt)")
    group = p.add_argument_group("TensorRT engines")
    group.add_argument("--from-onnx", metavar="DIR", help="build engines from this ONNX export (e.g. on a Jetson)")
    group.add_argument("--max-objects", type=int, default=engine.DEFAULT_MAX_OBJECTS,
                       help=f"most objects per graph call the engines accept (default {engine.DEFAULT_MAX_OBJECTS})")
    group.add_argument("--resolution", type=_argument(bench.parse_resolution), default=engine.DEFAULT_RESOLUTION,
                       help="HEIGHTxWIDTH of the frames the engines run (after --max-internal-size resizing; "
                            "padded to multiples of 16; default 480x854)")
    group.add_argument("--workspace", type=int, metavar="MIB",
                       help=f"builder workspace limit in MiB (default {engine.WORKSPACE_MIB}; "
                            f"{engine.SMALL_WORKSPACE_MIB} on Jetson or with --dla-core)")
    group.add_argument("--dla-core", type=int, metavar="N",
                       help="build for DLA core N with GPU fallback for the layers DLA cannot run (fp16 exports)")
    group.add_argument("--trtexec", action="store_true",
                       help="print the trtexec commands that build the same engines instead of building them")
    p.add_argument("--max-mem-frames", type=int, default=argparse.SUPPRESS,
                   help="memory capacity in frames recorded for the runtime; the engines hold up to this many "
                        "(default: the model's max_mem_frames; with --from-onnx: the export's)")
    p.add_argument("--top-k", type=int, default=InferenceConfig().top_k, help="top-k of the memory readout")
    _add_inference_options(p, TOPK_OPTIONS)
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from vosrt.export import engine

    profile = engine.EngineProfile(args.max_objects, args.resolution, getattr(args, "max_mem_frames", None))
    options = engine.BuildOptions(profile, args.workspace, args.dla_core)
    if args.from_onnx:
        _check_from_onnx(args)
        onnx_dir, output = Path(args.from_onnx), args.output
    elif args.model is None:
        raise ValueError(f"name the model to export ({', '.join(MODELS)}) or pass --from-onnx DIR")
    else:
        onnx_dir, output = _export_graphs(args), None
    if args.trtexec:
        from vosrt.export.onnx_export import read_manifest

        print("\n".join(engine.trtexec_commands(onnx_dir, read_manifest(onnx_dir), options, output)))
    elif args.format == "engine":
        engines = engine.build_engines(onnx_dir, output, options=options, progress=lambda line: print(line, flush=True))
        print(f"wrote TensorRT engines and manifest.json to {engines}")


def _check_from_onnx(args: argparse.Namespace) -> None:
    """--from-onnx builds engines from the graphs as they are: export options do not apply."""
    from vosrt.export.onnx_export import read_manifest

    if args.format == "onnx":
        raise ValueError("--from-onnx builds engines; --format onnx has nothing to do")
    given = [flag for flag, value in (("--weights", args.weights), ("--fp16", args.fp16),
                                      ("--custom-ops", args.custom_ops)) if value]
    given += [_FLAGS[field] for field in TOPK_OPTIONS if hasattr(args, field)]
    if given:
        raise ValueError(f"{' and '.join(given)} apply to the ONNX export; --from-onnx uses the graphs as exported")
    manifest = read_manifest(args.from_onnx)
    if args.model and args.model != manifest["model"]:
        raise ValueError(f"{args.from_onnx} holds {manifest['model']}, not {args.model}")


def _export_graphs(args: argparse.Namespace) -> Path:
    """The ONNX export of ``export-engine MODEL``; returns its directory."""
    from vosrt.api import build_model
    from vosrt.export.onnx_export import export_onnx

    config = CONFIG_TYPES[args.model](**_inference_options(args))
    precision = "fp16" if args.fp16 else "fp32"
    output = Path(args.output or f"{args.model}-{precision}")
    model = build_model(args.model, args.weights)
    checkpoint = wts.checkpoint_for(args.model, args.weights)
    export_onnx(model, args.model, output, checkpoint=checkpoint, top_k=config.top_k,
                max_mem_frames=config.max_mem_frames, fp16=args.fp16, opset=args.opset, custom_ops=args.custom_ops,
                topk=config.topk() if isinstance(config, JointFormerConfig) else None,
                progress=lambda line: print(line, flush=True))
    print(f"wrote ONNX graphs and manifest.json to {output}")
    return output


def _inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print an export directory's manifest and graph inputs/outputs "
                                       "(or an engine directory's build environment and profile)")
    p.add_argument("directory")
    p.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> None:
    from vosrt.export.engine import is_engine_dir
    from vosrt.export.onnx_export import read_manifest

    if is_engine_dir(args.directory):
        _inspect_engines(args.directory)
        return
    manifest = read_manifest(args.directory)
    print(f"{manifest['model']}  {manifest['precision']}  opset {manifest['opset']}  top_k {manifest['top_k']}  "
          f"max_mem_frames {manifest['max_mem_frames']}  vosrt {manifest['vosrt_version']}")
    if manifest.get("checkpoint"):
        print(f"checkpoint {manifest['checkpoint']['path']} sha256 {manifest['checkpoint']['sha256'][:16]}...")
    _print_graph_options(manifest)
    for name, graph in manifest["graphs"].items():
        print(f"\n{name} ({graph['file']})")
        for kind in ("inputs", "outputs"):
            for t in graph[kind]:
                print(f"  {kind[:-1]:6} {t['name']:18} {t['dtype']:8} [{', '.join(map(str, t['shape']))}]")


def _print_graph_options(manifest: dict) -> None:
    """The custom ops and (JointFormer) top-K options of an export or engine manifest."""
    if manifest.get("custom_ops"):
        print(f"custom ops {', '.join(manifest['custom_ops'])}")
    if manifest.get("topk"):
        print("top-K options " + "  ".join(f"{name} {value}" for name, value in manifest["topk"].items()))


def _inspect_engines(directory: str) -> None:
    from vosrt.export.engine import read_engine_manifest

    manifest = read_engine_manifest(directory)
    env, profile = manifest["environment"], manifest["profile"]
    device = f"DLA core {manifest['dla_core']} + GPU fallback" if manifest["dla_core"] is not None else "GPU"
    print(f"{manifest['model']}  {manifest['precision']} engines  top_k {manifest['top_k']}  "
          f"max_mem_frames {manifest['max_mem_frames']}  ({device})")
    print(f"built with TensorRT {env['tensorrt_version']} for {env['gpu_name']} (compute capability "
          f"{env['compute_capability']}), workspace {manifest['workspace_mib']} MiB")
    print(f"profile: 1..{profile['max_objects']} objects, {profile['resolution'][0]}x{profile['resolution'][1]} "
          f"frames (padded), ONNX graphs in {Path(directory) / manifest['onnx_directory']}")
    _print_graph_options(manifest)
    for name, info in manifest["engines"].items():
        print(f"  {name:16} {info['file']:24} sha256 {info['sha256'][:16]}...")


def _verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="compare each ONNX graph with the eager model, or each TensorRT engine with "
                                      "its ONNX graph on ONNX Runtime (Polygraphy)")
    p.add_argument("directory", help="an ONNX export, or an engine directory (DIR/tensorrt) to check the engines")
    p.add_argument("--weights", help="the checkpoint the graphs were exported from (default: the manifest's)")
    p.add_argument("--rel-tol", type=float, help="max |error| / max |reference output| allowed (default: 1e-4 "
                                                 "for ONNX vs eager; engines: 1e-2 fp32, 5e-2 fp16)")
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    from polygraphy.logger import G_LOGGER

    from vosrt.api import build_model
    from vosrt.export.engine import is_engine_dir, read_engine_manifest
    from vosrt.export.onnx_export import read_manifest
    from vosrt.export.verify import ENGINE_REL_TOL, compare_engines_with_onnxruntime, compare_with_eager

    G_LOGGER.module_severity = G_LOGGER.ERROR
    if is_engine_dir(args.directory):
        rel_tol = args.rel_tol or ENGINE_REL_TOL[read_engine_manifest(args.directory)["precision"]]
        checks = compare_engines_with_onnxruntime(args.directory, rel_tol=rel_tol)
        reference = "ONNX Runtime"
    else:
        manifest = read_manifest(args.directory)
        weights = args.weights or (manifest.get("checkpoint") or {}).get("path")
        rel_tol = args.rel_tol or 1e-4
        checks = compare_with_eager(args.directory, build_model(manifest["model"], weights), rel_tol=rel_tol)
        reference = "the eager model"
    print(f"{'graph':16} {'size':9} {'K':>2} {'output':14} {'max|err|':>9} {'rel':>9}")
    for c in checks:
        print(f"{c.graph:16} {c.size[0]}x{c.size[1]:<5} {c.num_objects:>2} {c.output:14} "
              f"{c.max_abs_error:9.2e} {c.relative_error:9.2e} {'ok' if c.passed else 'FAIL'}")
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ValueError(f"{len(failed)} of {len(checks)} outputs exceed rel-tol {rel_tol}")
    print(f"all {len(checks)} outputs within {rel_tol} of {reference}")


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency of backends: per graph and end to end, table, JSON and plot",
                       description="Time each backend on a synthetic clip (discs moving over a smooth background): "
                                   "warm-up frames (the first with the mask), then per-graph and end-to-end latency "
                                   "(median, p90), FPS, peak host (and CUDA) memory and the speed-up over eager fp32 "
                                   "torch in the same run, for every object count and memory size. Backends that "
                                   "cannot run here are reported as skipped with the reason.")
    p.add_argument("model", choices=MODELS)
    p.add_argument("--backends", default="torch,onnxruntime",
                   help=f"comma-separated, from {', '.join(bench.BENCH_BACKENDS)} (default: torch,onnxruntime)")
    p.add_argument("--resolution", type=_argument(bench.parse_resolution), default=(480, 854),
                   help="HEIGHTxWIDTH of the frames (default 480x854)")
    p.add_argument("--objects", type=_argument(bench.parse_counts), default=[1],
                   help="object counts, e.g. 1,3 or 1..4 (default 1)")
    p.add_argument("--memory-frames", type=_argument(bench.parse_counts),
                   help="memory sizes (max_mem_frames), e.g. 1..10 (default: the model's max_mem_frames)")
    p.add_argument("--frames", type=int, default=10, help="timed frames per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames first, the mask frame included (default 2)")
    p.add_argument("--weights", help="checkpoint file (default: random weights; the timing does not depend on them)")
    p.add_argument("--engine-dir", help="tensorrt: a directory built by export-engine on this GPU")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the clip")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--plot", help="write a PNG plot of latency vs memory frames and vs objects here (needs matplotlib)")
    _add_inference_options(p, set(_FLAGS) - {"max_mem_frames"})
    p.set_defaults(run=run_bench)


def _argument(parse):
    """An argparse ``type`` whose ValueError message is shown as it is."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


def run_bench(args: argparse.Namespace) -> None:
    if args.plot:
        bench.require_matplotlib()
    for path in filter(None, (args.json, args.plot)):
        if not Path(path).resolve().parent.is_dir():
            raise FileNotFoundError(f"folder not found for {path}")
    settings = bench.BenchSettings(
        model=args.model, backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        resolution=args.resolution, objects=args.objects, memory_frames=args.memory_frames, frames=args.frames,
        warmup=args.warmup, weights=args.weights, engine_dir=args.engine_dir, device=args.device, seed=args.seed,
        options=_inference_options(args))
    report = {"command": shlex.join(["vosrt", *args.argv])} | bench.run_benchmark(settings)
    print(bench.format_table(report))
    if args.json:
        _write_text_atomically(Path(args.json), json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(report, args.plot)
        print(f"wrote {args.plot}")


def _write_text_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="J&F against ground truth, or IoU agreement of two prediction folders",
                       description="--pred DIR --gt DIR: J&F (DAVIS protocol: first and last frame skipped) computed "
                                   "by the vos-benchmark package. --compare DIR_A DIR_B: per-frame IoU agreement of "
                                   "two prediction folders, e.g. an fp16 engine against eager. A folder is one video "
                                   "(PNG label maps inside) or a dataset (one sub-folder per video).")
    p.add_argument("--pred", help="predicted label maps")
    p.add_argument("--gt", help="ground-truth label maps")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"), help="two prediction folders")
    p.add_argument("--all-frames", action="store_true", help="J&F: score the first and last frame too")
    p.add_argument("--json", help="write the scores as JSON here")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    scoring = args.pred is not None or args.gt is not None
    if (args.compare is None) != scoring or (scoring and (args.pred is None or args.gt is None)):
        raise ValueError("give either --pred DIR --gt DIR, or --compare DIR_A DIR_B")
    if args.compare:
        frames = evaluate.compare_predictions(*args.compare)
        report = evaluate.agreement_report(frames)
        print(evaluate.format_agreement(report))
    else:
        score = evaluate.jf_score(args.pred, args.gt, skip_first_and_last=not args.all_frames)
        report = evaluate.score_report(score)
        print(evaluate.format_score(score))
    if args.json:
        _write_text_atomically(Path(args.json), json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vosrt", description="Video object segmentation for deployment.")
    sub = parser.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
    _bench_parser(sub)
    _eval_parser(sub)
    _add_export_arguments(sub.add_parser("export", help="export ONNX graphs (and engines): same as export-engine"))
    _inspect_parser(sub)
    _verify_parser(sub)
    return parser


def export_engine_main(argv: list[str] | None = None) -> int:
    """``export-engine MODEL ...``: the same as ``vosrt export MODEL ...``."""
    return main(["export", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
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
