"""What vosrt keeps in its cache (``$VOSRT_CACHE`` or ``~/.cache/vosrt``): downloaded checkpoints
(``*.pth``) and the ONNX exports made for ``backend="onnxruntime"`` without ``export_dir``
(``onnx/<model>-<checkpoint sha256>-<settings>-<precision>``). ``vosrt cache`` lists them with
their sizes and removes them. No torch import.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

KINDS = ("exports", "checkpoints")


def cache_dir() -> Path:
    """Where downloads and exports made for you go: ``$VOSRT_CACHE`` or ``~/.cache/vosrt``."""
    return Path(os.environ.get("VOSRT_CACHE", Path.home() / ".cache" / "vosrt"))


@dataclass(frozen=True)
class Entry:
    """One cached item: ``kind`` is ``"exports"`` or ``"checkpoints"``; ``size`` in bytes."""

    kind: str
    path: Path
    size: int


def entries(root: Path | None = None) -> list[Entry]:
    """The checkpoints, then the ONNX exports, in the cache (``root``: default :func:`cache_dir`)."""
    root = cache_dir() if root is None else root
    found = [Entry("checkpoints", p, p.stat().st_size) for p in sorted(root.glob("*.pth")) if p.is_file()]
    exports = root / "onnx"
    if exports.is_dir():
        found += [Entry("exports", p, size_of(p)) for p in sorted(exports.iterdir()) if p.is_dir()]
    return found


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human(size: int) -> str:
    """``116391936`` -> ``"111 MB"`` (MiB, as du -h counts)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} B"


def clear(kind: str = "all", root: Path | None = None) -> list[Entry]:
    """Remove the cached items of ``kind`` (``"exports"``, ``"checkpoints"`` or ``"all"``); returns them."""
    if kind != "all" and kind not in KINDS:
        raise ValueError(f"clear one of {', '.join(KINDS)} or all, not {kind!r}")
    removed = [e for e in entries(root) if kind in ("all", e.kind)]
    for entry in removed:
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink()
    return removed


def listing(root: Path | None = None) -> str:
    """The cache's location, each item with its size, and the total."""
    root = cache_dir() if root is None else root
    found = entries(root)
    lines = [f"vosrt cache: {root} ($VOSRT_CACHE, default ~/.cache/vosrt)"]
    if not found:
        return "\n".join(lines + ["  empty"])
    lines += [f"  {human(e.size):>8}  {e.kind[:-1]:10}  {e.path.name}" for e in found]
    lines.append(f"  {human(sum(e.size for e in found)):>8}  in all; vosrt cache --clear [exports|checkpoints] "
                 "removes them")
    return "\n".join(lines)


def export_note(export_dir: Path) -> str:
    """The line printed when an export is first written into the cache: where, and how much space."""
    total = sum(e.size for e in entries(export_dir.parent.parent))
    return (f"vosrt: cached the ONNX export in {export_dir} ({human(size_of(export_dir))}; the cache holds "
            f"{human(total)}: vosrt cache lists it, vosrt cache --clear empties it)")
