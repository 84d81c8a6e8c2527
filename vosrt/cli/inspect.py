"""``vosrt inspect``: what an export or engine directory holds."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print an export directory's manifest and graph inputs/outputs "
                                       "(or an engine directory's build environment and profile)")
    p.add_argument("directory")
    p.add_argument("--no-check-files", dest="check_files", action="store_false",
                   help="do not compare the files with the sha256 sums of the manifest")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vosrt.runtime import artifacts

    if artifacts.is_engine_dir(args.directory):
        _print_engines(args.directory, artifacts.read_manifest(args.directory, artifacts.ENGINE_FORMAT,
                                                               check_files=args.check_files))
        return
    manifest = artifacts.read_manifest(args.directory, check_files=args.check_files)
    print(f"{manifest['model']}  {manifest['precision']}  opset {manifest['opset']}  "
          f"max_mem_frames {manifest['max_mem_frames']}  vosrt {manifest['vosrt_version']}")
    if manifest.get("checkpoint"):
        print(f"checkpoint {manifest['checkpoint']['path']} sha256 {manifest['checkpoint']['sha256'][:16]}...")
    _print_settings(manifest)
    for name, graph in manifest["graphs"].items():
        print(f"\n{name} ({graph['file']})")
        for kind in ("inputs", "outputs"):
            for t in graph[kind]:
                print(f"  {kind[:-1]:6} {t['name']:18} {t['dtype']:8} [{', '.join(map(str, t['shape']))}]")


def _print_settings(manifest: dict) -> None:
    """The export settings and custom ops of an export or engine manifest."""
    print("settings " + "  ".join(f"{name} {value}" for name, value in manifest["settings"].items()))
    if manifest["custom_ops"]:
        print(f"custom ops {', '.join(manifest['custom_ops'])}")


def _print_engines(directory: str, manifest: dict) -> None:
    env, profile = manifest["environment"], manifest["profile"]
    device = f"DLA core {manifest['dla_core']} + GPU fallback" if manifest["dla_core"] is not None else "GPU"
    print(f"{manifest['model']}  {manifest['precision']} engines  max_mem_frames {manifest['max_mem_frames']}  "
          f"({device})")
    print(f"built with TensorRT {env['tensorrt_version']} for {env['gpu_name']} (compute capability "
          f"{env['compute_capability']}), workspace {manifest['workspace_mib']} MiB")
    print(f"profile: 1..{profile['max_objects']} objects per stream, 1..{profile.get('max_streams', 1)} streams per "
          f"call, {profile['resolution'][0]}x{profile['resolution'][1]} frames (padded), ONNX graphs in "
          f"{Path(directory) / manifest['onnx_directory']}")
    _print_settings(manifest)
    for name, info in manifest["engines"].items():
        print(f"  {name:18} {info['file']:24} sha256 {info['sha256'][:16]}...")
