"""Official checkpoints (listed in :mod:`vosrt.runtime.registry`): download with checks, and strict loading.

A download is cached only once it is known whole and right: it is written to a fresh hidden file
beside its place in the cache (removed on any failure, Ctrl-C and SIGTERM included), its size must
equal the Content-Length the server announced, its md5 the published one where the official
repository publishes one, and it must load as a state_dict of the model's official layout (every
key, every shape: :func:`check_layout`) before it is renamed into the cache.
"""
from __future__ import annotations

import http.client
import math
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vosrt.cache import cache_dir
from vosrt.runtime import safe_write
from vosrt.runtime.artifacts import file_digest
from vosrt.runtime.registry import Checkpoint, model_spec


def checkpoint_for(model: str, weights: str | Path | None) -> Path:
    """``weights`` as a path, or the official default checkpoint of ``model`` (downloaded and
    checked against the model's layout if needed)."""
    if weights is not None:
        return Path(weights)
    return fetch(model_spec(model).default_checkpoint, check=lambda path: check_layout(model, path, "the download"))




def fetch(checkpoint: Checkpoint, progress: bool = True, check: Callable[[Path], None] | None = None) -> Path:
    """Path of ``checkpoint`` in the cache, downloading it first if needed. A download is cached
    only when its size matches the announced Content-Length, its md5 the recorded one (if any)
    and ``check(path)`` (e.g. :func:`check_layout`) passes; otherwise nothing is left behind."""
    target = cache_dir() / f"{checkpoint.name}.pth"
    if target.exists() and (checkpoint.md5 is None or file_digest(target, "md5") == checkpoint.md5):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    def verify(partial: Path) -> None:
        if checkpoint.md5 is not None and file_digest(partial, "md5") != checkpoint.md5:
            raise OSError(f"checksum mismatch for {checkpoint.url}: the download is corrupt, try again")
        if check is not None:
            try:
                check(partial)
            except ValueError as err:
                raise OSError(f"not a whole checkpoint of the official layout: {_first_line(err)}") from None

    try:
        with safe_write.staged_file(target, verify) as partial:
            _download(checkpoint.url, partial, progress)
    except OSError as err:
        raise FileNotFoundError(
            f"could not download {checkpoint.name} ({err}); nothing was cached. Download {checkpoint.url} yourself "
            f"and put it at {target}, or pass weights=PATH (--weights PATH on the command line)") from None
    return target


def _download(url: str, dest: Path, progress: bool) -> None:
    """Write what ``url`` serves to ``dest``; OSError when it ends before the announced Content-Length."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("content-length", 0)) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
    except http.client.HTTPException as err:  # e.g. IncompleteRead: not an OSError
        raise OSError(f"the connection broke: {type(err).__name__}") from None
    if total is not None and received != total:
        raise OSError(f"the download stopped after {received:,} of {total:,} bytes")


def check_layout(model: str, path: str | Path, source: str | None = None) -> None:
    """ValueError unless the checkpoint at ``path`` (``source`` in messages) loads as a state_dict
    of ``model``'s official layout (every key with its shape), as :func:`load_strict` would load it."""
    spec = model_spec(model)
    state_dict = read_state_dict(path, source)
    load_strict(spec.family.build_network(spec.variant, state_dict), state_dict, source or str(path))


def read_state_dict(path: str | Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: a raw state_dict, or one wrapped as official training
    checkpoints do (``{"weights": ...}``), with any DistributedDataParallel ``module.`` prefix removed.
    ``source``: what errors call the file (default: its path)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or non-torch file: torch raises many kinds
        cached = " (a damaged download: delete it and run again)" if path.parent == cache_dir() and not source else ""
        raise ValueError(f"{source or path} is not a readable PyTorch checkpoint{cached} ({type(err).__name__}: "
                         f"{_first_line(err)})") from None
    for wrapper in ("weights", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{source or path} does not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names what is wrong (a key, a shape, or
    a non-finite value: :func:`check_finite`)."""
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
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """ValueError naming the first tensor of ``state_dict`` (in its order) with a NaN or infinite
    value: such weights make every probability NaN, and every label background. One float64 sum
    per tensor (finite exactly when every value is: no float32 values can overflow it), 0.2 s for
    cutie-small on one core, where ``isfinite(t).all()`` takes twice that."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not math.isfinite(float(tensor.sum(dtype=torch.float64))):
            bad = int((~torch.isfinite(tensor)).sum())
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            raise ValueError(f"{source} holds non-finite weights: {key} has {bad} {kind} value(s) (the first such "
                             "tensor); a damaged or diverged checkpoint, which vosrt does not run")


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


def _listing(title: str, items: list[str], limit: int = 8) -> str:
    if not items:
        return ""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title}: " + ", ".join(items[:limit]) + more
