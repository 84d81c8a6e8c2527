"""AOTInductor backend: ``backend="aoti"`` runs the ``.pt2`` packages of ``export-engine --format aoti``.

Each stage's package is loaded once (``torch._inductor.aoti_load_package``) after its directory's
manifest is checked (:func:`vosrt.runtime.artifacts.read_manifest`: fields, sha256 of every file
and of the manifest itself; :func:`~vosrt.runtime.artifacts.check_aoti_compatible`: built by this
vosrt and torch for this device). A package needs no vosrt code to run: the top-K ops were
compiled into it (:mod:`vosrt.kernels.torch_ops`); :mod:`vosrt.kernels.torch_ops` is imported
before loading all the same, which is what a process loading a package kept with the op as one
node (``decompose_custom_triton_ops=False``) must do.

Packages fix the frame size (the manifest's ``resolution``); a frame of another padded size is
refused with the command that builds packages for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..artifacts import AOTI_FORMAT, ArtifactError, check_aoti_compatible, load_constants, read_manifest
from ..registry import MODELS
from ..stages import StageSpec
from .base import Backend
from .compiled import dense


class AotiBackend(Backend):
    """Runs the AOTInductor packages in ``directory`` on ``device`` (see the module docstring)."""

    def __init__(self, directory: str | Path, device: torch.device | str = "cpu", *, check_files: bool = True):
        import vosrt.kernels.torch_ops  # noqa: F401  (registers the vosrt:: ops)

        directory = Path(directory)
        self.directory = directory
        self.manifest = read_manifest(directory, AOTI_FORMAT, check_files=check_files)
        self.device = torch.device(device)
        check_aoti_compatible(self.manifest, self.device, directory)
        self.stages = MODELS[self.manifest["model"]].family.stages
        self.architecture = self.manifest["architecture"]
        self.constants = load_constants(directory, self.manifest, self.device)
        self.resolution = tuple(self.manifest["resolution"])
        self.dtype = torch.float16 if self.manifest["precision"] == "fp16" else torch.float32
        self.compile_seconds = {name: info.get("compile_seconds") for name, info in self.manifest["packages"].items()}
        self.packages = {}
        for name, info in self.manifest["packages"].items():
            try:
                self.packages[name] = torch._inductor.aoti_load_package(str(directory / info["file"]))
            except Exception as err:  # the loader raises RuntimeError or zipfile errors for a damaged file
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ArtifactError(f"torch cannot load {directory / info['file']} ({first}): export again") from None

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        self._check_frame(stage, inputs)
        # a package reads its inputs with the dense strides it was compiled for: views of a filling
        # memory (strides of the whole buffer) must be copied first
        inputs = [dense(x.to(self.dtype) if x.is_floating_point() else x) for x in inputs]
        with torch.inference_mode():
            outputs = self.packages[stage.name](*inputs)
        return [x.float() if x.is_floating_point() else x for x in outputs]

    def _check_frame(self, stage: StageSpec, inputs: list[torch.Tensor]) -> None:
        """ValueError for a frame of another size than the packages were compiled for."""
        for spec, x in zip(stage.inputs, inputs):
            if spec.shape[-2:] == ("H", "W") and tuple(x.shape[-2:]) != self.resolution:
                height, width = x.shape[-2:]
                raise ValueError(f"the packages in {self.directory} run {self.resolution[0]}x{self.resolution[1]} "
                                 f"frames (padded); this one is {height}x{width}: export-engine "
                                 f"{self.manifest['model']} --format aoti --resolution {height}x{width}")
