"""Export and engine directories: their manifests, written and read in one place.

An ONNX export directory holds one ``<stage>.onnx`` per stage of the model, the constants a
session needs (``<name>.npy``) and ``manifest.json``; an engine directory (by default
``<export>/tensorrt``) holds one ``<stage>.engine`` per stage, the constants and its own
manifest. Both manifests are checked here before anything in the directory is used: a
missing or malformed field, a missing file or a file whose sha256 differs from the one
recorded is one clear error that names the file and what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import safe_write
from .config import SessionConfig
from .registry import MODELS, ModelSpec

MANIFEST = "manifest.json"
ONNX_FORMAT = "vosrt-onnx/2"
ENGINE_FORMAT = "vosrt-tensorrt/2"
AOTI_FORMAT = "vosrt-aoti/1"
ENGINE_DIR = "tensorrt"  # default engine directory inside an ONNX export directory

# Fields every manifest has, and those of each kind, with their JSON types.
_COMMON_FIELDS = {"format": str, "model": str, "precision": str, "settings": dict, "max_mem_frames": int,
                  "architecture": dict, "custom_ops": list, "constants": dict}
_FIELDS = {
    ONNX_FORMAT: _COMMON_FIELDS | {"opset": int, "vosrt_version": str, "graphs": dict},
    ENGINE_FORMAT: _COMMON_FIELDS | {"onnx_directory": str, "environment": dict, "profile": dict,
                                     "input_shapes": dict, "engines": dict, "dla_core": (int, type(None)),
                                     "workspace_mib": int, "strongly_typed": bool},
    AOTI_FORMAT: _COMMON_FIELDS | {"vosrt_version": str, "torch_version": str, "device": str, "device_name": str,
                                   "resolution": list, "packages": dict, "manifest_sha256": str},
}
_FILES = {ONNX_FORMAT: "graphs", ENGINE_FORMAT: "engines", AOTI_FORMAT: "packages"}
_WHAT = {ONNX_FORMAT: "an ONNX export (export-engine --format onnx)", ENGINE_FORMAT: "a TensorRT engine directory",
         AOTI_FORMAT: "an AOTInductor export (export-engine --format aoti)"}


class ArtifactError(ValueError):
    """An export or engine directory that cannot be used as it is."""


def vosrt_version() -> str:
    """The installed vosrt's version (what manifests record), without importing the package."""
    return metadata.version("vosrt")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def engine_directory(directory: str | Path) -> Path:
    """``directory`` itself when it holds engines, else its ``tensorrt`` subdirectory."""
    directory = Path(directory)
    return directory if is_engine_dir(directory) else directory / ENGINE_DIR


def is_engine_dir(directory: str | Path) -> bool:
    """Whether ``directory``'s manifest says it holds TensorRT engines."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text()).get("format") == ENGINE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_aoti_dir(directory: str | Path) -> bool:
    """Whether ``directory``'s manifest says it holds AOTInductor packages."""
    try:
        return json.loads((Path(directory) / MANIFEST).read_text()).get("format") == AOTI_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(directory: str | Path, kind: str = ONNX_FORMAT, *, check_files: bool = True) -> dict:
    """The checked manifest of an export (``kind`` :data:`ONNX_FORMAT`) or engine directory
    (:data:`ENGINE_FORMAT`). ``check_files``: also compare every file with its recorded sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    what = _WHAT[kind]
    if not path.is_file():
        raise ArtifactError(f"{directory} is not {what}: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); export again") from None
    _check_fields(manifest, path, kind)
    if kind == AOTI_FORMAT and manifest["manifest_sha256"] != manifest_digest(manifest):
        raise ArtifactError(f"{path} was edited after the export (its manifest_sha256 does not match its content): "
                            "export again")
    files = manifest[_FILES[kind]]
    missing = [stage for stage in MODELS[manifest["model"]].family.stages if stage not in files]
    if missing:
        raise ArtifactError(f"{path}: no entry for the stage(s) {', '.join(missing)}; export again")
    for stage, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise ArtifactError(f"{path}: {_FILES[kind]}.{stage} must be an object with a 'file'; export again")
        if kind == ONNX_FORMAT and not all(_tensor_list(entry.get(side)) for side in ("inputs", "outputs")):
            raise ArtifactError(f"{path}: graphs.{stage} must list its inputs and outputs (name, shape, dtype); "
                                "export again")
        _check_file(directory, entry["file"], entry.get("sha256"), path, check_files)
    for name, file in manifest["constants"].items():
        _check_file(directory, file, None, path, check_files)
    return manifest


def _check_fields(manifest: Any, path: Path, kind: str) -> None:
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} must hold a JSON object, not {type(manifest).__name__}; export again")
    if manifest.get("format") != kind:
        found = manifest.get("format")
        raise ArtifactError(f"{path} has format {found!r}, not {kind!r}: "
                            + ("an export of another vosrt version; export again" if found else "export again"))
    for field, types in _FIELDS[kind].items():
        if not isinstance(manifest.get(field), types):
            raise ArtifactError(f"{path}: field '{field}' is missing or malformed; export again")
    if manifest["model"] not in MODELS:
        raise ArtifactError(f"{path} holds an unknown model {manifest['model']!r}")


def _tensor_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
        and isinstance(t.get("dtype"), str) for t in value)


def _check_file(directory: Path, file: str, digest: str | None, manifest_path: Path, check_sum: bool) -> None:
    path = directory / file
    if Path(file).name != file or not path.is_file():
        raise ArtifactError(f"{manifest_path} lists {file}, which is not in {directory}; export again")
    if check_sum and digest is not None and sha256(path) != digest:
        raise ArtifactError(f"{path} differs from the file the manifest records (sha256 mismatch): export again, "
                            "or pass check_files=False (--no-check-files) if you edited it on purpose")


@contextlib.contextmanager
def load_errors(directory: str | Path, runtime: str = "ONNX Runtime") -> Iterator[None]:
    """Within the block, an error of ``runtime`` loading a graph of ``directory`` (onnxruntime's
    InvalidProtobuf, InvalidArgument, ...; a protobuf DecodeError), which derive from Exception
    only, becomes one :class:`ArtifactError` line that says what to do."""
    try:
        yield
    except Exception as err:
        if not type(err).__module__.startswith(("onnxruntime", "onnx", "google.protobuf")):
            raise
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise ArtifactError(f"{runtime} cannot load a graph of {directory} ({lines[0]}): export again, or restore "
                            "the file (without --no-check-files a changed file is caught by its sha256)") from None


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest``; an AOTInductor manifest gets the digest of its own content
    (``manifest_sha256``), so that an edited manifest is refused."""
    if manifest.get("format") == AOTI_FORMAT:
        manifest = {**manifest, "manifest_sha256": manifest_digest(manifest)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def manifest_digest(manifest: dict) -> str:
    """sha256 of ``manifest``'s content besides ``manifest_sha256`` (canonical JSON)."""
    content = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, the CPU model elsewhere (what an AOTInductor package was compiled for)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_aoti_compatible(manifest: dict, device: torch.device, directory: str | Path) -> None:
    """ArtifactError unless the packages of ``manifest`` were built by this vosrt and torch for
    ``device``'s type (and, on CUDA, the same GPU model); the message says how to rebuild them."""
    rebuild = f"rebuild them here: export-engine {manifest['model']} --format aoti --device {device.type}"
    here = {"vosrt_version": vosrt_version(), "torch_version": torch.__version__, "device": device.type}
    if device.type == "cuda":
        here["device_name"] = device_name(device)
    for field, value in here.items():
        if manifest[field] != value:
            raise ArtifactError(f"the packages in {directory} were built with {field.replace('_', ' ')} "
                                f"{manifest[field]!r}, here it is {value!r}; {rebuild}")


def describe_file(path: Path, **extra) -> dict:
    """A manifest entry for the file at ``path``."""
    return {"file": path.name, "sha256": sha256(path), **extra}


def save_constants(directory: Path, constants: dict[str, torch.Tensor]) -> dict[str, str]:
    """Save each constant as ``<name>.npy`` -> the manifest's ``constants`` field."""
    for name, tensor in constants.items():
        np.save(directory / f"{name}.npy", tensor.detach().float().cpu().numpy())
    return {name: f"{name}.npy" for name in constants}


def load_constants(directory: Path, manifest: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.load(directory / file)).to(device) for name, file in manifest["constants"].items()}


def check_fits(manifest: dict, spec: ModelSpec, config: SessionConfig, fp16: bool, directory: str | Path) -> None:
    """ValueError unless an export (or engine) directory fits the session asked for."""
    if manifest["model"] != spec.name:
        raise ValueError(f"{directory} holds {manifest['model']}, not {spec.name}")
    settings = config.export_settings()
    if manifest["settings"] != settings:
        differ = {k: v for k, v in manifest["settings"].items() if settings.get(k) != v}
        options = ", ".join(f"{k}={v!r}" for k, v in differ.items())
        raise ValueError(f"{directory} was exported with {options}; pass {options} or export again with those settings")
    if fp16 and manifest["precision"] != "fp16":
        raise ValueError(f"fp16=True but {directory} holds {manifest['precision']} graphs")


def is_vosrt_export(directory: str | Path) -> bool:
    """Whether ``directory``'s manifest marks it as written by vosrt (an ONNX export or an engine
    directory, of this or an earlier format version): the only folders an export replaces."""
    try:
        found = json.loads((Path(directory) / MANIFEST).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(found, str) and found.startswith("vosrt-")


_OUTPUT_RULE = dict(replaceable=is_vosrt_export, what="output folder", kind="a vosrt export")


def check_export_destination(output: str | Path) -> None:
    """ValueError or FileExistsError unless an export may be written to ``output``: absent, empty
    or a vosrt export (:func:`is_vosrt_export`), and not a protected folder
    (:func:`vosrt.runtime.safe_write.check_not_protected`)."""
    safe_write.check_replaceable(Path(output), **_OUTPUT_RULE)


@contextlib.contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """A new temporary sibling of ``output`` to write into: when the block completes it replaces
    ``output``; when it raises (or is interrupted), it is removed and ``output`` is left as it was.
    ``output`` must pass :func:`check_export_destination`, which is checked before the block runs and again
    before the swap."""
    with safe_write.replaced_folder(output, **_OUTPUT_RULE) as staging:
        yield staging


# -- TensorRT engines: what they are tied to -------------------------------------------------

@dataclass(frozen=True)
class TensorRTEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor"

    @classmethod
    def current(cls, device: torch.device | str | int = 0) -> "TensorRTEnvironment":
        """This machine's TensorRT and the GPU ``device``."""
        trt = import_tensorrt()
        major, minor = torch.cuda.get_device_capability(device)
        return cls(trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}")


def import_tensorrt(why: str = "TensorRT engines need"):
    """The ``tensorrt`` module, or a RuntimeError that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise RuntimeError(f"{why} the tensorrt package, which is not installed "
                           "(pip install 'vosrt[gpu]' on a machine with an NVIDIA GPU)") from None
    return tensorrt


def check_compatible(manifest: dict, current: TensorRTEnvironment, engine_dir: str | Path) -> None:
    """Raise RuntimeError unless the engines of ``manifest`` were built with ``current``'s
    TensorRT version on the same GPU model; the message says how to rebuild them."""
    built = TensorRTEnvironment(**manifest["environment"])
    mismatches = [f"{what} {getattr(built, field)} (here: {getattr(current, field)})"
                  for field, what in (("tensorrt_version", "TensorRT"), ("gpu_name", "GPU"),
                                      ("compute_capability", "compute capability"))
                  if getattr(built, field) != getattr(current, field)]
    if mismatches:
        onnx_dir = Path(engine_dir) / manifest["onnx_directory"]
        raise RuntimeError(f"the engines in {engine_dir} were built for {', '.join(mismatches)}; TensorRT engines "
                           f"only run where they were built: rebuild them here with "
                           f"export-engine --from-onnx {onnx_dir}")


def register_custom_ops(manifest: dict) -> None:
    """Register the TensorRT plugins of vosrt's custom ops when a manifest lists some (``custom_ops``),
    before its graphs are parsed or its engines deserialised."""
    if manifest["custom_ops"]:
        from vosrt.kernels import trt_plugin

        trt_plugin.register()
