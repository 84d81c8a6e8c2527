"""Settings every model's session has. No torch import: the command line turns the fields of
each model's config dataclass into its options."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A settings field that is also a command-line option: ``help`` its help text, ``flag`` its
    flag where it is not ``--field-name`` (``--no-field-name`` for a field that defaults to True),
    ``choices`` the values it takes (see :mod:`vosrt.cli.options`)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass(frozen=True)
class SessionConfig:
    """mem_every: memorise every N frames (and every frame with a mask); max_mem_frames: memory
    frames per bucket, the permanent first frame included; top_k: memory tokens each query
    reads; max_internal_size: resize frames so the shorter side is at most this (-1: keep)."""

    mem_every: int = option(5, "memorise every N frames")
    max_mem_frames: int = option(5, "memory size in frames, the permanent first frame included")
    top_k: int = option(30, "memory tokens read per pixel (jointformer: per token)")
    max_internal_size: int = option(-1, "resize so the shorter side is at most this (-1: keep size)")

    def __post_init__(self) -> None:
        for name in ("mem_every", "max_mem_frames", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_options(cls, model: str, options: dict):
        """The config of ``options``; TypeError naming the options ``cls`` does not have."""
        valid = sorted(f.name for f in fields(cls))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown} for {model}; valid: {valid}")
        return cls(**options)

    def check_engine_memory(self, engine_max_mem_frames: int, directory, static: bool = False) -> None:
        """ValueError unless engines built for ``engine_max_mem_frames`` hold this session's memory
        (``static`` engines, DLA builds, hold exactly that memory)."""
        if static and self.max_mem_frames != engine_max_mem_frames:
            raise ValueError(f"the engines in {directory} were built with --dla-core for exactly max_mem_frames="
                             f"{engine_max_mem_frames} (static shapes); pass max_mem_frames={engine_max_mem_frames}")
        if self.max_mem_frames > engine_max_mem_frames:
            raise ValueError(f"the engines in {directory} hold at most max_mem_frames={engine_max_mem_frames}; "
                             f"pass max_mem_frames <= {engine_max_mem_frames} or rebuild with --max-mem-frames")

    def export_settings(self) -> dict:
        """What an export fixes (recorded in its manifest; a session must ask for the same)."""
        raise NotImplementedError
