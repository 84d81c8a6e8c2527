"""What TensorRT engines are built for: the optimization profile and the builder settings."""
from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from pathlib import Path

from vosrt.runtime.geometry import FrameGeometry
from vosrt.runtime.registry import MODELS

TIMING_CACHE = "timing.cache"
DEFAULT_RESOLUTION = (480, 854)
DEFAULT_MAX_OBJECTS = 4
DEFAULT_MAX_STREAMS = 1
WORKSPACE_MIB = 4096  # builder scratch memory on a workstation GPU
SMALL_WORKSPACE_MIB = 1024  # on Jetson and for DLA builds (shared, smaller memory)


def is_jetson() -> bool:
    """True on an NVIDIA Jetson board (aarch64 with the L4T release file)."""
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").exists()


@dataclass(frozen=True)
class EngineProfile:
    """What the engines accept: 1..``max_objects`` objects per stream, frames of ``resolution``
    (H, W, padded to multiples of 16 here), the memory of sessions with up to ``max_mem_frames``
    (None: the ONNX export's ``max_mem_frames``) per bucket, and 1..``max_streams`` streams per
    call (:func:`vosrt.load_batch`; the stream axes ``B`` and ``BK`` of :mod:`vosrt.runtime.stages`)."""

    max_objects: int = DEFAULT_MAX_OBJECTS
    resolution: tuple[int, int] = DEFAULT_RESOLUTION
    max_mem_frames: int | None = None
    max_streams: int = DEFAULT_MAX_STREAMS

    def __post_init__(self) -> None:
        if self.max_objects < 1:
            raise ValueError(f"--max-objects must be >= 1, got {self.max_objects}")
        if self.max_streams < 1:
            raise ValueError(f"--max-streams must be >= 1, got {self.max_streams}")
        if len(self.resolution) != 2 or min(self.resolution) < 16:
            raise ValueError(f"--resolution must be HxW with both sides >= 16, got {self.resolution}")
        if self.max_mem_frames is not None and self.max_mem_frames < 1:
            raise ValueError(f"--max-mem-frames must be >= 1, got {self.max_mem_frames}")
        padded = FrameGeometry.for_size(tuple(int(s) for s in self.resolution), max_internal_size=-1).padded
        object.__setattr__(self, "resolution", padded)

    def for_export(self, onnx_manifest: dict) -> "EngineProfile":
        """This profile with ``max_mem_frames`` filled in from the ONNX manifest when None."""
        return replace(self, max_mem_frames=self.max_mem_frames or onnx_manifest["max_mem_frames"])

    def input_shapes(self, onnx_manifest: dict, static: bool = False) -> dict[str, dict[str, dict[str, list[int]]]]:
        """``{stage: {input: {"min"|"opt"|"max": shape}}}`` for an export's stages.

        min: one stream, one object, one memory frame; opt and max: ``max_streams`` streams of
        ``max_objects`` objects and a full memory (the family's ``memory_frames``). The image size
        is fixed, so TensorRT tunes for exactly the frames it will see. ``static``: min = opt = max,
        the only profile DLA takes.
        """
        family = MODELS[onnx_manifest["model"]].family
        frames = family.memory_frames(self.for_export(onnx_manifest).max_mem_frames)
        architecture = onnx_manifest["architecture"]
        full = family.example_sizes(architecture, *self.resolution, self.max_objects, frames, self.max_streams)
        smallest = family.example_sizes(architecture, *self.resolution, 1, 1)
        corners = {"min": full if static else smallest, "opt": full, "max": full}
        return {name: {tensor.name: {corner: tensor.resolve(sizes) for corner, sizes in corners.items()}
                       for tensor in stage.inputs}
                for name, stage in family.stages.items()}


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings. ``workspace_mib`` None: :data:`WORKSPACE_MIB`, or
    :data:`SMALL_WORKSPACE_MIB` on Jetson or with a DLA core. With ``dla_core`` the profile is
    static: DLA takes no dynamic dimensions, so a layer it could run sees exactly
    ``max_objects`` objects and a full memory, or runs on the GPU. ``tf32``: let fp32 layers
    round their inputs to TF32 (10-bit mantissas), TensorRT's default; off unless asked."""

    profile: EngineProfile = EngineProfile()
    workspace_mib: int | None = None
    dla_core: int | None = None
    tf32: bool = False

    def __post_init__(self) -> None:
        if self.dla_core is not None and self.dla_core < 0:
            raise ValueError(f"--dla-core must be >= 0, got {self.dla_core}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ValueError(f"--workspace must be >= 1 MiB, got {self.workspace_mib}")

    def input_shapes(self, onnx_manifest: dict) -> dict[str, dict[str, dict[str, list[int]]]]:
        """The engines' profile shapes (see :meth:`EngineProfile.input_shapes`): static for DLA."""
        return self.profile.input_shapes(onnx_manifest, static=self.dla_core is not None)

    @property
    def workspace(self) -> int:
        """Workspace limit in MiB."""
        if self.workspace_mib is not None:
            return self.workspace_mib
        return SMALL_WORKSPACE_MIB if self.dla_core is not None or is_jetson() else WORKSPACE_MIB
