"""``export-engine`` (also ``vosrt export``): ONNX graphs of a model, then TensorRT engines."""
from __future__ import annotations

import argparse
from pathlib import Path

from vosrt.export.opset import DEFAULT_OPSET, OPSETS, check_opset
from vosrt.export.profile import (DEFAULT_MAX_OBJECTS, DEFAULT_MAX_STREAMS, DEFAULT_RESOLUTION, SMALL_WORKSPACE_MIB,
                                  WORKSPACE_MIB)
from vosrt.runtime.registry import MODEL_NAMES, MODELS

from .options import add_inference_options, argument, inference_options, parse_resolution

# The memory size an export records, and the settings it fixes (each model config's export_settings()).
EXPORT_FIELDS = ("max_mem_frames", *dict.fromkeys(field for spec in MODELS.values()
                                                   for field in spec.config_type().export_settings()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", choices=MODEL_NAMES, help="the model to export (not with --from-onnx)")
    p.add_argument("--weights", help="checkpoint file (default: download the official one)")
    p.add_argument("--format", choices=("onnx", "engine", "aoti"), default="engine",
                   help="engine (default): ONNX graphs, then TensorRT engines in <output>/tensorrt (needs TensorRT "
                        "and an NVIDIA GPU; without them the ONNX graphs are kept, the trtexec commands printed and "
                        "the exit status is 0); onnx: graphs only; aoti: one AOTInductor package (.pt2) per stage, "
                        "compiled for --device and --resolution on this machine (backend='aoti')")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="--format aoti: the device the packages run on (default cpu)")
    p.add_argument("--fp16", action="store_true", help="fp16 graphs (similarity, softmax and normalisations stay fp32)")
    p.add_argument("--custom-ops", action="store_true",
                   help="export Cutie's top-k readout as one vosrt::TopKReadout node, JointFormer's top-K filtered "
                        "joint attention as one vosrt::TopKJointAttention node per block (ONNX Runtime: "
                        "onnxruntime-extensions on the CPU; TensorRT: the Triton kernels as plugins) instead of "
                        "standard ONNX ops")
    p.add_argument("--output", help="output directory (default: ./<model>-<precision>; with --from-onnx: the engine "
                                    "directory, default DIR/tensorrt); an existing one is replaced only if it is "
                                    "empty or a vosrt export")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {OPSETS[0]}..{OPSETS[-1]} (default {DEFAULT_OPSET})")
    group = p.add_argument_group("TensorRT engines")
    group.add_argument("--from-onnx", metavar="DIR", help="build engines from this ONNX export (e.g. on a Jetson)")
    group.add_argument("--max-objects", type=int, default=DEFAULT_MAX_OBJECTS,
                       help=f"most objects per stream the engines accept (default {DEFAULT_MAX_OBJECTS})")
    group.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS,
                       help="most streams (videos) one engine call takes, for vosrt.load_batch and segment with "
                            f"several --input (default {DEFAULT_MAX_STREAMS}; a batch runs more in further calls)")
    group.add_argument("--resolution", type=argument(parse_resolution), default=DEFAULT_RESOLUTION,
                       help="HEIGHTxWIDTH of the frames the engines run (after --max-internal-size resizing; "
                            "padded to multiples of 16; default %dx%d)" % DEFAULT_RESOLUTION)
    group.add_argument("--workspace", type=int, metavar="MIB",
                       help=f"builder workspace limit in MiB (default {WORKSPACE_MIB}; "
                            f"{SMALL_WORKSPACE_MIB} on Jetson or with --dla-core)")
    group.add_argument("--dla-core", type=int, metavar="N",
                       help="build for DLA core N with GPU fallback for the layers DLA cannot run (fp16 exports)")
    group.add_argument("--tf32", action="store_true",
                       help="let fp32 layers (fp32 engines, the fp32 parts of fp16 engines) round their inputs to "
                            "TF32, 10-bit mantissas (TensorRT's default; off here)")
    group.add_argument("--trtexec", action="store_true",
                       help="print the trtexec commands that build the same engines instead of building them")
    group.add_argument("--no-check-files", dest="check_files", action="store_false",
                       help="--from-onnx: do not compare the graphs with the sha256 sums of the manifest (for graphs "
                            "edited on purpose)")
    add_inference_options(p, EXPORT_FIELDS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vosrt.export.profile import BuildOptions, EngineProfile
    from vosrt.export.tensorrt import BuildEnvironmentMissing, build_engines
    from vosrt.export.trtexec import trtexec_commands
    from vosrt.runtime import artifacts

    profile = EngineProfile(args.max_objects, args.resolution, getattr(args, "max_mem_frames", None), args.max_streams)
    options = BuildOptions(profile, args.workspace, args.dla_core, args.tf32)
    if args.from_onnx:
        _check_from_onnx(args)
        onnx_dir, output = Path(args.from_onnx), args.output
    elif args.model is None:
        raise ValueError(f"name the model to export ({', '.join(MODEL_NAMES)}) or pass --from-onnx DIR")
    elif args.format == "aoti":
        directory = _export_packages(args)
        print(_next_steps(args.model, directory))
        return
    else:
        onnx_dir, output = _export_graphs(args), None
    if args.trtexec:
        print("\n".join(trtexec_commands(onnx_dir, artifacts.read_manifest(onnx_dir, check_files=args.check_files),
                                          options, output)))
    elif args.format == "engine":
        try:
            engines = build_engines(onnx_dir, output, options=options, progress=lambda line: print(line, flush=True),
                                    check_files=args.check_files)
        except BuildEnvironmentMissing as missing:
            if args.from_onnx:
                raise  # engines were all this command was asked for
            # The graphs are made and kept: what a workstation without TensorRT is for (exit status 0).
            print(f"note: no engines built: {missing}")
            print(_next_steps(args.model, onnx_dir))
            return
        print(f"wrote TensorRT engines and manifest.json to {engines}")
        print(_next_steps(args.model or artifacts.read_manifest(onnx_dir, check_files=False)["model"], engines))
    else:
        print(_next_steps(args.model, onnx_dir))


def _next_steps(model: str, directory: Path) -> str:
    """What to run after an export: segment with it (the directory picks the backend), and for
    ONNX graphs, where engines come from."""
    from vosrt.runtime import artifacts

    lines = ["next:", f"  vosrt segment {model} --export-dir {directory} --input FRAMES --masks MASKS --output OUT"]
    if not artifacts.is_engine_dir(directory) and not artifacts.is_aoti_dir(directory):
        lines += [f"  vosrt verify {directory}            # each graph against the eager model",
                  f"  export-engine --from-onnx {directory}  # TensorRT engines, on the GPU that will run them"]
    return "\n".join(lines)


def _check_from_onnx(args: argparse.Namespace) -> None:
    """--from-onnx builds engines from the graphs as they are: export options do not apply."""
    from vosrt.runtime import artifacts

    if args.format == "onnx":
        raise ValueError("--from-onnx builds engines; --format onnx has nothing to do")
    given = [flag for flag, value in (("--weights", args.weights), ("--fp16", args.fp16),
                                      ("--custom-ops", args.custom_ops)) if value]
    given += [f"--{field.replace('_', '-')}" for field in EXPORT_FIELDS[1:] if hasattr(args, field)]
    if given:
        raise ValueError(f"{' and '.join(given)} apply to the ONNX export; --from-onnx uses the graphs as exported")
    manifest = artifacts.read_manifest(args.from_onnx, check_files=args.check_files)
    if args.model and args.model != manifest["model"]:
        raise ValueError(f"{args.from_onnx} holds {manifest['model']}, not {args.model}")


def _export_packages(args: argparse.Namespace) -> Path:
    """The AOTInductor packages of ``export-engine MODEL --format aoti``; returns their directory."""
    from vosrt import weights as wts
    from vosrt.api import build_network, resolve_device
    from vosrt.export.aoti import export_aoti
    from vosrt.runtime import artifacts

    if args.model is None:
        raise ValueError(f"name the model to compile ({', '.join(MODEL_NAMES)})")
    if args.custom_ops:
        raise ValueError("--custom-ops is for ONNX graphs; AOTInductor packages hold the top-K as compiled code")
    resolve_device(args.device)
    config = MODELS[args.model].config_type(**inference_options(args))
    height, width = ((size + 15) // 16 * 16 for size in args.resolution)
    output = Path(args.output or f"{args.model}-aoti-{args.device}-{'fp16' if args.fp16 else 'fp32'}")
    artifacts.check_output(output)
    checkpoint = wts.checkpoint_for(args.model, args.weights)
    export_aoti(build_network(args.model, checkpoint), args.model, output, config=config, checkpoint=checkpoint,
                device=args.device, fp16=args.fp16, resolution=(height, width),
                progress=lambda line: print(line, flush=True))
    print(f"wrote AOTInductor packages and manifest.json to {output}")
    return output


def _export_graphs(args: argparse.Namespace) -> Path:
    """The ONNX export of ``export-engine MODEL``; returns its directory."""
    from vosrt import weights as wts
    from vosrt.api import build_network
    from vosrt.export.onnx import export_onnx
    from vosrt.runtime import artifacts

    check_opset(args.opset)  # before the weights are loaded
    config = MODELS[args.model].config_type(**inference_options(args))
    output = Path(args.output or f"{args.model}-{'fp16' if args.fp16 else 'fp32'}")
    artifacts.check_export_destination(output)
    checkpoint = wts.checkpoint_for(args.model, args.weights)
    export_onnx(build_network(args.model, checkpoint), args.model, output, config=config, checkpoint=checkpoint,
                fp16=args.fp16, opset=args.opset, custom_ops=args.custom_ops,
                progress=lambda line: print(line, flush=True))
    print(f"wrote ONNX graphs and manifest.json to {output}")
    return output
