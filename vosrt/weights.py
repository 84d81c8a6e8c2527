"""Official checkpoints: registry, download with checksum, and strict loading."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

CUTIE_RELEASE = "https://github.com/hkchengrex/Cutie/releases/download/v1.0"
JOINTFORMER_RELEASE = "https://github.com/MCG-NJU/JointFormer/releases/download/v0.1"
# The release checkpoints of the official checkpoints/download_checkpoint.sh (suffix = training
# stages: s0/s01 pre-trained, s2/s02/s012 DAVIS + YouTube-VOS, s24/s024 VOST, s5/s05/s015 MOSE,
# s026/s0126 LVOS, s7/s07 VISOR); the official repository publishes no checksums.
JOINTFORMER_STAGES = ("s0", "s01", "s2", "s02", "s012", "s24", "s024", "s5", "s05", "s015", "s026", "s0126",
                      "s7", "s07")


@dataclass(frozen=True)
class Checkpoint:
    """An official checkpoint. ``md5`` is None where the official repository publishes none."""

    name: str
    model: str
    url: str
    md5: str | None = None


CHECKPOINTS = {c.name: c for c in [
    Checkpoint("cutie-base-mega", "cutie-base", f"{CUTIE_RELEASE}/cutie-base-mega.pth",
               "a6071de6136982e396851903ab4c083a"),
    Checkpoint("cutie-small-mega", "cutie-small", f"{CUTIE_RELEASE}/cutie-small-mega.pth"),
    Checkpoint("cutie-base-nomose", "cutie-base", f"{CUTIE_RELEASE}/cutie-base-nomose.pth"),
    Checkpoint("cutie-small-nomose", "cutie-small", f"{CUTIE_RELEASE}/cutie-small-nomose.pth"),
    Checkpoint("cutie-base-wmose", "cutie-base", f"{CUTIE_RELEASE}/cutie-base-wmose.pth"),
    Checkpoint("cutie-small-wmose", "cutie-small", f"{CUTIE_RELEASE}/cutie-small-wmose.pth"),
    *(Checkpoint(f"jointformer_{stage}", "jointformer", f"{JOINTFORMER_RELEASE}/jointformer_{stage}.pth")
      for stage in JOINTFORMER_STAGES),
]}

# The checkpoint a model name loads when no weights are given.
# JointFormer: the one the official eval.sh uses for DAVIS and YouTube-VOS.
DEFAULT_CHECKPOINT = {"cutie-small": "cutie-small-mega", "cutie-base": "cutie-base-mega",
                      "jointformer": "jointformer_s2"}


def checkpoint_for(model: str, weights: str | Path | None) -> Path:
    """``weights`` as a path, or the registry's default checkpoint for ``model`` (downloaded if needed)."""
    return Path(weights) if weights is not None else fetch(CHECKPOINTS[DEFAULT_CHECKPOINT[model]])


def cache_dir() -> Path:
    """Where downloads go: ``$VOSRT_CACHE`` or ``~/.cache/vosrt``."""
    return Path(os.environ.get("VOSRT_CACHE", Path.home() / ".cache" / "vosrt"))


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(checkpoint: Checkpoint, progress: bool = True) -> Path:
    """Path of ``checkpoint`` in the cache, downloading it first if needed (checksum verified)."""
    target = cache_dir() / f"{checkpoint.name}.pth"
    if target.exists() and (checkpoint.md5 is None or md5sum(target) == checkpoint.md5):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        _download(checkpoint.url, partial, progress)
        if checkpoint.md5 is not None and md5sum(partial) != checkpoint.md5:
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
