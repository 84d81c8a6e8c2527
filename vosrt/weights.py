"""Official checkpoints (listed in :mod:`vosrt.runtime.registry`): download with checksum, and strict loading."""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vosrt.runtime.artifacts import file_digest
from vosrt.runtime.registry import Checkpoint, model_spec


def checkpoint_for(model: str, weights: str | Path | None) -> Path:
    """``weights`` as a path, or the official default checkpoint of ``model`` (downloaded if needed)."""
    return Path(weights) if weights is not None else fetch(model_spec(model).default_checkpoint)


def cache_dir() -> Path:
    """Where downloads go: ``$VOSRT_CACHE`` or ``~/.cache/vosrt``."""
    return Path(os.environ.get("VOSRT_CACHE", Path.home() / ".cache" / "vosrt"))


def fetch(checkpoint: Checkpoint, progress: bool = True) -> Path:
    """Path of ``checkpoint`` in the cache, downloading it first if needed (checksum verified)."""
    target = cache_dir() / f"{checkpoint.name}.pth"
    if target.exists() and (checkpoint.md5 is None or file_digest(target, "md5") == checkpoint.md5):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        _download(checkpoint.url, partial, progress)
        if checkpoint.md5 is not None and file_digest(partial, "md5") != checkpoint.md5:
            raise OSError(f"checksum mismatch for {checkpoint.url}: the download is corrupt, try again")
        shutil.move(partial, target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"could not download {checkpoint.name} ({err}).\nDownload {checkpoint.url} yourself and either "
            f"put it at {target} or pass weights=PATH (--weights PATH on the command line).") from None
    return target


def _download(url: str, dest: Path, progress: bool) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("content-length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: a raw state_dict, or one wrapped as official training
    checkpoints do (``{"weights": ...}``), with any DistributedDataParallel ``module.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or non-torch file: torch raises many kinds
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    for wrapper in ("weights", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names what is wrong."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{source} does not fit {type(model).__name__} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shape keys)"
                         + _listing("missing", missing) + _listing("unexpected", unexpected)
                         + _listing("wrong shape", [f"{k}: file {tuple(state_dict[k].shape)}, model "
                                                    f"{tuple(expected[k].shape)}" for k in wrong])
                         + "\nIs it a checkpoint of this model (e.g. small vs base)?")
    model.load_state_dict(state_dict, strict=True)


def _listing(title: str, items: list[str], limit: int = 8) -> str:
    if not items:
        return ""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title}: " + ", ".join(items[:limit]) + more
