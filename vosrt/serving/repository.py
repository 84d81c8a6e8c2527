"""``vosrt export-triton``: a Triton Inference Server model repository serving a vosrt model.

Layout (docs/serving.md)::

    REPO/
      vosrt-repository.json       marks the folder as vosrt's (what may be replaced)
      MODEL/                      the vosrt model name, e.g. cutie-small
        config.pbtxt              Python backend, sequence batcher (oldest), controls, instances
        1/
          model.py                imports vosrt.serving.triton_model.TritonPythonModel
          vosrt.json              the load_batch settings
          weights.pth | export/   the checkpoint (torch) or the export directory (onnxruntime, tensorrt)
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vosrt.runtime import safe_write

from .contract import CORRID, END, IMAGE, LABELS, MASK, OBJECTS, PROBABILITIES, START
from .triton_model import SETTINGS

MARKER = "vosrt-repository.json"
VERSION = "1"
MODEL_PY = '''"""Served by vosrt (vosrt export-triton): see vosrt.serving.triton_model."""
from vosrt.serving.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass
class ServingOptions:
    """How the repository serves the model. ``instances``: CPU model instances (``device="cpu"``);
    on ``cuda`` one instance per GPU. ``max_streams``: streams open at once per instance (the
    oldest strategy's candidate sequences; more wait in the server's backlog) and most requests
    per ``execute``. ``idle_seconds``: a stream without a frame for this long is freed.
    ``queue_delay_us``: how long the batcher waits for more streams' frames to join a call."""
    backend: str = "torch"
    device: str = "cpu"
    instances: int = 1
    max_streams: int = 8
    idle_seconds: float = 60.0
    queue_delay_us: int = 2000
    options: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.backend not in ("torch", "onnxruntime", "tensorrt"):
            raise ValueError(f"unknown backend {self.backend!r}; choose torch, onnxruntime or tensorrt")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device}: choose cpu or cuda (one instance per GPU)")
        if self.backend == "tensorrt" and self.device != "cuda":
            raise ValueError("--backend tensorrt runs on the GPU: pass --device cuda")
        for name, value in (("instances", self.instances), ("max_streams", self.max_streams)):
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.idle_seconds <= 0:
            raise ValueError(f"--idle-timeout must be positive, got {self.idle_seconds:g}")


def is_repository(folder: Path) -> bool:
    """Whether ``folder`` is a repository vosrt wrote (and so may be replaced)."""
    return (folder / MARKER).is_file()


def export_triton(model: str, output: str | Path, serving: ServingOptions, *, weights: str | Path | None = None,
                  export_dir: str | Path | None = None) -> Path:
    """Write the repository of ``model`` to ``output`` (absent, empty, or a repository vosrt wrote:
    anything else is refused) and return its path. torch: ``weights`` (None: the official
    checkpoint, downloaded); onnxruntime and tensorrt: ``export_dir`` (export-engine's output)."""
    from vosrt import weights as wts
    from vosrt.runtime import artifacts

    serving.check()
    output = Path(output)
    sources = [("--weights", weights), ("--export-dir", export_dir)]
    safe_write.check_outside(output, sources, "--output")
    if serving.backend == "torch":
        if export_dir is not None:
            raise ValueError("--export-dir is for --backend onnxruntime or tensorrt; torch loads --weights")
        source, name = wts.checkpoint_for(model, weights), "weights.pth"
    else:
        if export_dir is None:
            raise ValueError(f"--backend {serving.backend} serves an export: pass --export-dir (export-engine's "
                             "output)")
        manifest = artifacts.read_manifest(artifacts.engine_directory(export_dir) if serving.backend == "tensorrt"
                                           else export_dir, artifacts.ENGINE_FORMAT if serving.backend == "tensorrt"
                                           else artifacts.ONNX_FORMAT, check_files=False)
        if manifest["model"] != model:
            raise ValueError(f"{export_dir} holds {manifest['model']}, not {model}")
        source, name = Path(export_dir), "export"
    with safe_write.replaced_folder(output, is_repository, "--output", "a vosrt model repository") as staging:
        version = staging / model / VERSION
        version.mkdir(parents=True)
        (staging / model / "config.pbtxt").write_text(model_config(model, serving))
        (version / "model.py").write_text(MODEL_PY)
        settings = {"model": model, "backend": serving.backend, "device": serving.device, **serving.options,
                    ("weights" if serving.backend == "torch" else "export_dir"): name}
        (version / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
        if source.is_dir():
            shutil.copytree(source, version / name)
        else:
            _link_or_copy(source, version / name)
        (staging / MARKER).write_text(json.dumps({"model": model, "vosrt": artifacts.vosrt_version()}, indent=2)
                                      + "\n")
    return output


def model_config(model: str, serving: ServingOptions) -> str:
    """config.pbtxt: the Python backend, the contract's tensors, the sequence batcher and the instances."""
    def tensor(name: str, dtype: str, dims: str, optional: bool) -> str:
        extra = " allow_ragged_batch: true optional: true" if optional else ""
        return f'  {{ name: "{name}" data_type: {dtype} dims: [ {dims} ]{extra} }}'

    def control(name: str, kind: str, value: str) -> str:
        return f'    {{ name: "{name}" control [ {{ kind: {kind} {value} }} ] }}'

    kind = "KIND_GPU" if serving.device == "cuda" else "KIND_CPU"
    count = 1 if serving.device == "cuda" else serving.instances
    inputs = [tensor(IMAGE, "TYPE_UINT8", "-1, -1, 3", True), tensor(MASK, "TYPE_INT32", "-1, -1", True),
              tensor(OBJECTS, "TYPE_INT32", "-1", True)]
    outputs_ = [tensor(PROBABILITIES, "TYPE_FP32", "-1, -1, -1", False), tensor(LABELS, "TYPE_INT32", "-1, -1", False)]
    controls = [control(START, "CONTROL_SEQUENCE_START", "int32_false_true: [ 0, 1 ]"),
                control(END, "CONTROL_SEQUENCE_END", "int32_false_true: [ 0, 1 ]"),
                control(CORRID, "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_UINT64")]
    return "\n".join([
        f"# Written by vosrt export-triton: {model}, {serving.backend} on {serving.device}. "
        "The contract: docs/serving.md",
        f'name: "{model}"',
        'backend: "python"',
        f"max_batch_size: {serving.max_streams}",
        "input [", ",\n".join(inputs), "]",
        "output [", ",\n".join(outputs_), "]",
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {round(serving.idle_seconds * 1e6)}",
        "  control_input [", ",\n".join(controls), "  ]",
        "  oldest {",
        f"    max_candidate_sequences: {serving.max_streams}",
        f"    max_queue_delay_microseconds: {serving.queue_delay_us}",
        "  }",
        "}",
        f"instance_group [ {{ count: {count} kind: {kind} }} ]",
        "",
    ])


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link to ``source`` where the file system allows it (a checkpoint is large), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
