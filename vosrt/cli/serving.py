"""``vosrt export-triton``: a Triton Inference Server model repository (docs/serving.md)."""
from __future__ import annotations

import argparse

from vosrt.runtime.registry import MODEL_NAMES

from .options import add_inference_options, inference_options


def add_parser(sub) -> None:
    p = sub.add_parser("export-triton", help="write a Triton Inference Server model repository serving a model",
                       description="Write a Triton model repository: config.pbtxt (Python backend, sequence batcher "
                                   "with the oldest strategy, START/END/CORRID controls, instances) and a model.py "
                                   "that keeps each stream's memory on the server, one vosrt.load_batch per "
                                   "instance. Serve it with tritonserver --model-repository REPO; clients use "
                                   "vosrt.connect or vosrt segment --server. The server's Python environment needs "
                                   "vosrt, torch and numpy<2 (docs/serving.md).")
    p.add_argument("model", choices=MODEL_NAMES)
    p.add_argument("--output", required=True,
                   help="the repository folder (new, empty, or a repository vosrt wrote: it is replaced)")
    p.add_argument("--weights", help="checkpoint file for --backend torch (default: download the official one)")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), default="torch",
                   help="what each instance runs (default torch); onnxruntime and tensorrt serve --export-dir")
    p.add_argument("--export-dir", help="onnxruntime: an ONNX export; tensorrt: a directory built by export-engine "
                                        "on the serving GPU (copied into the repository)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: --instances CPU instances; cuda: one instance per GPU (default cpu)")
    p.add_argument("--instances", type=int, default=1, help="CPU model instances, each its own process (default 1)")
    p.add_argument("--max-streams", type=int, default=8,
                   help="streams open at once per instance, and most frames per call (default 8; more streams wait "
                        "in the server's queue until one ends)")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="a stream without a frame for this long is closed and its memory freed (default 60)")
    p.add_argument("--queue-delay-us", type=int, default=2000,
                   help="microseconds the batcher waits for other streams' frames to join a call (default 2000)")
    add_inference_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vosrt.serving.repository import ServingOptions, export_triton

    serving = ServingOptions(backend=args.backend, device=args.device, instances=args.instances,
                             max_streams=args.max_streams, idle_seconds=args.idle_timeout,
                             queue_delay_us=args.queue_delay_us, options=inference_options(args))
    output = export_triton(args.model, args.output, serving, weights=args.weights, export_dir=args.export_dir)
    print(f"wrote the Triton model repository {output} ({args.model}, {args.backend} on {args.device})")
    print("next:")
    print(f"  tritonserver --model-repository {output}        # in the server's Python environment (docs/serving.md)")
    print(f"  vosrt segment {args.model} --server HOST:8001 --input FRAMES --masks MASKS --output OUT")
