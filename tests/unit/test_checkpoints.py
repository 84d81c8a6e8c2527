"""Checkpoint layout, strict loading, wrappers, clear errors, and the download cache."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from helpers import REFERENCE, require_shared
from vosrt import weights as wts
from vosrt.api import build_network
from vosrt.models.cutie.config import VARIANTS
from vosrt.models.cutie.model import Cutie
from vosrt.runtime.registry import MODELS, Checkpoint


@pytest.mark.parametrize("model", ["cutie-small", "cutie-base"])
def test_state_dict_matches_official_layout(model):
    require_shared()
    layout = json.loads((REFERENCE / f"{model}.layout.json").read_text())
    state = Cutie(VARIANTS[MODELS[model].variant]).state_dict()
    assert set(state) == set(layout)
    assert {k: list(v.shape) for k, v in state.items()} == {k: shape for k, (shape, _) in layout.items()}
    assert {k: str(v.dtype) for k, v in state.items()} == {k: dtype for k, (_, dtype) in layout.items()}


def test_strict_load_of_seeded_weights(seeded_weights):
    model = build_network("cutie-small", seeded_weights("cutie-small"))
    expected = torch.load(seeded_weights("cutie-small"))
    assert torch.equal(model.state_dict()["object_transformer.spatial_pe.inv_freq"],
                       expected["object_transformer.spatial_pe.inv_freq"])


def test_training_checkpoint_wrapper_and_ddp_prefix(seeded_weights, tmp_path):
    state = torch.load(seeded_weights("cutie-small"))
    path = tmp_path / "wrapped.pth"
    torch.save({"weights": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}, path)
    model = build_network("cutie-small", path)
    assert torch.equal(model.state_dict()["key_proj.key_proj.weight"], state["key_proj.key_proj.weight"])


def test_wrong_model_checkpoint_names_the_keys(seeded_weights):
    with pytest.raises(ValueError, match=r"168 missing, 0 unexpected, 20 wrong-shape keys") as err:
        build_network("cutie-base", seeded_weights("cutie-small"))
    assert "missing: pixel_encoder.layer2.0.bn3.bias" in str(err.value)
    assert "small vs base" in str(err.value)


def test_checkpoint_with_foreign_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"backbone.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"unexpected: backbone\.weight"):
        build_network("cutie-small", path)


def test_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        build_network("cutie-small", corrupt)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_network("cutie-small", tmp_path / "absent.pth")


def test_registry_download_verifies_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSRT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "remote.pth"
    source.write_bytes(b"payload")
    good = Checkpoint("demo", source.as_uri(), hashlib.md5(b"payload").hexdigest())
    path = wts.fetch(good, progress=False)
    assert path.read_bytes() == b"payload" and path.parent == tmp_path / "cache"

    bad = Checkpoint("demo-bad", source.as_uri(), "0" * 32)
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        wts.fetch(bad, progress=False)
    assert not list((tmp_path / "cache").glob("*.part")) and not (tmp_path / "cache" / "demo-bad.pth").exists()


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSRT_CACHE", str(tmp_path))
    unreachable = Checkpoint("cutie-small-mega", (tmp_path / "nowhere.pth").as_uri())
    with pytest.raises(FileNotFoundError) as err:
        wts.fetch(unreachable, progress=False)
    assert str(tmp_path / "cutie-small-mega.pth") in str(err.value) and "weights=PATH" in str(err.value)


def test_registry_lists_the_official_release():
    """Names and URLs as the official download scripts give them; the defaults are the ones the
    official evaluation uses (cutie-*-mega, JointFormer's s2 for DAVIS and YouTube-VOS)."""
    defaults = {name: spec.default_checkpoint.name for name, spec in MODELS.items()}
    assert defaults == {"cutie-small": "cutie-small-mega", "cutie-base": "cutie-base-mega",
                        "jointformer": "jointformer_s2"}
    checkpoints = {c.name: c for spec in MODELS.values() for c in spec.checkpoints}
    assert checkpoints["cutie-base-mega"].url == "https://github.com/hkchengrex/Cutie/releases/download/v1.0/cutie-base-mega.pth"
    assert checkpoints["jointformer_s0126"].url.startswith("https://github.com/MCG-NJU/JointFormer/releases/download/v0.1/")
    assert all(c.url.endswith(f"/{name}.pth") for name, c in checkpoints.items())
    assert len(checkpoints) == 6 + 14
