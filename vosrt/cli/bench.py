"""``vosrt bench``: latency of backends on a synthetic clip, per stage and end to end."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from vosrt.bench.settings import BENCH_BACKENDS, BenchSettings, passive_openmp_threads
from vosrt.runtime.registry import MODEL_NAMES

from .options import add_inference_options, argument, inference_options, option_fields, parse_counts, parse_resolution


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency of backends: per stage and end to end, table, JSON and plot; or "
                                     "the throughput of several streams (--streams)",
                       description="Time each backend on a synthetic clip (discs moving over a smooth background): "
                                   "warm-up frames (the first with the mask), then per-stage and end-to-end latency "
                                   "(median, p90), FPS, peak host (and CUDA) memory and the speed-up over eager fp32 "
                                   "torch in the same run, for every object count and memory size. Backends that "
                                   "cannot run here are reported as skipped with the reason.")
    p.add_argument("model", choices=MODEL_NAMES)
    p.add_argument("--backends", default="torch,onnxruntime",
                   help=f"comma-separated, from {', '.join(BENCH_BACKENDS)} (default: torch,onnxruntime)")
    p.add_argument("--resolution", type=argument(parse_resolution), default=(480, 854),
                   help="HEIGHTxWIDTH of the frames (default 480x854)")
    p.add_argument("--objects", type=argument(parse_counts), default=[1],
                   help="object counts, e.g. 1,3 or 1..4 (default 1)")
    p.add_argument("--memory-frames", type=argument(parse_counts),
                   help="memory sizes (max_mem_frames), e.g. 1..10 (default: the model's max_mem_frames)")
    p.add_argument("--frames", type=int, default=10, help="timed frames per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed frames first, the mask frame included (default 2); without --fill at least "
                        "enough to fill the memory")
    p.add_argument("--streams", type=argument(parse_counts),
                   help="stream counts, e.g. 1,2,4,8: measure throughput instead of latency, the streams batched "
                        "(vosrt.load_batch, each with its own clip) and stepped one after the other, in one run; "
                        "reports aggregate and per-stream FPS and the ratio")
    p.add_argument("--fill", action="store_true",
                   help="time the frames while the memory fills up (what a short clip costs) instead of a full memory")
    p.add_argument("--weights", help="checkpoint file (default: random weights; the timing does not depend on them)")
    p.add_argument("--engine-dir", help="tensorrt: a directory built by export-engine on this GPU")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the clip")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--plot", help="write a PNG plot of latency vs memory frames and vs objects here (needs matplotlib)")
    p.add_argument("--server", metavar="HOST:PORT",
                   help="with --streams: the streams on this Triton server (a repository of vosrt export-triton) "
                        "beside the same streams in-process (--backends' first, the options given here: give those "
                        "of the repository); frames/s, latency p50/p99 and the batches the server formed")
    add_inference_options(p, option_fields() - {"max_mem_frames"})
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    omp_wait_policy = passive_openmp_threads()  # before torch loads
    from vosrt.bench import report
    from vosrt.bench.measure import run_benchmark
    from vosrt.runtime import safe_write

    if args.server:
        _run_server(args)
        return
    if args.plot and args.streams:
        raise ValueError("--plot draws latencies; with --streams the table and --json hold the throughput")
    if args.plot:
        report.require_matplotlib()
    for path in filter(None, (args.json, args.plot)):
        if not Path(path).resolve().parent.is_dir():
            raise FileNotFoundError(f"folder not found for {path}")
    settings = BenchSettings(
        model=args.model, backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        resolution=args.resolution, objects=args.objects, memory_frames=args.memory_frames, frames=args.frames,
        warmup=args.warmup, weights=args.weights, engine_dir=args.engine_dir, device=args.device, seed=args.seed,
        options=inference_options(args), fill=args.fill, streams=args.streams)
    results = {"command": shlex.join(["vosrt", *args.argv])} | run_benchmark(settings)
    results["environment"]["omp_wait_policy"] = omp_wait_policy
    print(report.format_table(results))
    if args.json:
        safe_write.write_text(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(results, args.plot)
        print(f"wrote {args.plot}")


def _run_server(args: argparse.Namespace) -> None:
    """``--server``: the streams on a Triton server beside the same streams in-process (vosrt.bench.server)."""
    from dataclasses import asdict

    from vosrt.api import load_batch
    from vosrt.bench.measure import _weights_file
    from vosrt.bench.server import format_server_table, measure_server
    from vosrt.runtime import safe_write

    if not args.streams or len(args.objects) != 1:
        raise ValueError("--server needs --streams (e.g. 1,4,8) and one --objects count")
    backend = BENCH_BACKENDS[args.backends.split(",")[0].strip()].runtime
    options = inference_options(args) | ({"max_mem_frames": args.memory_frames[0]} if args.memory_frames else {})
    settings = BenchSettings(model=args.model, backends=["torch"], resolution=args.resolution, objects=args.objects,
                             memory_frames=None, frames=args.frames, warmup=args.warmup, weights=args.weights,
                             engine_dir=args.engine_dir, device=args.device, seed=args.seed, options=options)
    with _weights_file(settings) as weights:
        runs = measure_server(args.server, args.model,
                              lambda: load_batch(args.model, weights, backend=backend, device=args.device,
                                                 export_dir=args.engine_dir, **options),
                              args.streams, args.resolution, args.objects[0], args.frames, args.warmup, args.seed)
    print(format_server_table(runs))
    if args.json:
        results = {"command": shlex.join(["vosrt", *args.argv]), "server": args.server, "in_process_backend": backend,
                   "runs": [asdict(run) for run in runs]}
        safe_write.write_text(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
