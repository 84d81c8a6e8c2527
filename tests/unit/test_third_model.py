"""A third model family defined entirely in tests/ (:mod:`tiny_vos`), registered through
``vosrt.register_model``: every public path runs it with no edit to vosrt's own files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_vos
import vosrt
from stream_clips import label_flips_outside_near_ties, max_dprob_per_stream, run_batched, run_independent
from tiny_vos.network import TinyVOS
from vosrt.api import build_network
from vosrt.cli import main
from vosrt.export.onnx import export_onnx
from vosrt.runtime import artifacts

HEIGHT, WIDTH = 48, 80  # padded to 48x80: a 3x5 grid of tokens


def _clip(frames: int, seed: int) -> list:
    """Random frames; objects 1 and 2 on frame 0 (two boxes), object 3 joining on frame 3."""
    rng = np.random.default_rng(seed)
    clip = []
    for i in range(frames):
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        mask = objects = None
        if i in (0, 3):
            mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
            if i == 0:
                mask[4:20, 4:30], mask[24:44, 40:76], objects = 1, 2, [1, 2]
            else:
                mask[30:46, 2:20], objects = 3, [3]
        clip.append((image, mask, objects))
    return clip


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny-vos.pth"
    torch.save(TinyVOS().state_dict(), path)
    with tiny_vos.registered():
        yield path


@pytest.fixture(scope="module")
def export_dir(weights, tmp_path_factory):
    return export_onnx(build_network("tiny-vos", weights), "tiny-vos", tmp_path_factory.mktemp("onnx") / "tiny",
                       checkpoint=weights, progress=lambda _: None)


def test_load_and_step(weights):
    session = vosrt.load("tiny-vos", weights=weights)
    outputs = [session.step(image, mask, objects) for image, mask, objects in _clip(6, seed=0)]
    assert [p.shape for p in outputs] == [(3, HEIGHT, WIDTH)] * 3 + [(4, HEIGHT, WIDTH)] * 3
    assert all(np.allclose(p.sum(0), 1, atol=1e-5) for p in outputs)
    assert session.object_ids == [1, 2, 3]
    assert set(np.unique(session.to_mask(outputs[-1]))) <= {0, 1, 2, 3}
    session.remove_objects([2])
    assert session.step(_clip(7, seed=0)[6][0]).shape == (3, HEIGHT, WIDTH)


def test_streams_in_a_batch_match_independent_sessions(weights):
    schedule = {"a": (0, _clip(6, seed=1)), "b": (2, _clip(5, seed=2))}
    independent = run_independent(lambda: vosrt.load("tiny-vos", weights=weights), schedule)
    batched = run_batched(vosrt.load_batch("tiny-vos", weights=weights), schedule)
    assert label_flips_outside_near_ties(batched, independent) == {"a": 0, "b": 0}
    assert max(max_dprob_per_stream(batched, independent).values()) < 1e-5


def test_onnx_export_runs_on_onnxruntime_and_passes_vosrt_verify(weights, export_dir, capsys):
    manifest = artifacts.read_manifest(export_dir)
    assert manifest["model"] == "tiny-vos" and set(manifest["graphs"]) == set(tiny_vos.family.STAGES)
    clip = _clip(6, seed=3)
    eager, onnx = vosrt.load("tiny-vos", weights=weights), vosrt.load("tiny-vos", export_dir=export_dir)
    for image, mask, objects in clip:
        np.testing.assert_allclose(onnx.step(image, mask, objects), eager.step(image, mask, objects), atol=1e-5)
    assert main(["verify", str(export_dir), "--sizes", "48x80,64x96", "--objects", "1,3"]) == 0
    assert "all 20 outputs within their tolerance of the eager fp32 model" in capsys.readouterr().out


def test_export_keeps_the_safe_write_rules(weights, export_dir, tmp_path):
    network = build_network("tiny-vos", weights)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="is not a vosrt export"):
        export_onnx(network, "tiny-vos", mine, progress=lambda _: None)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    again = export_onnx(network, "tiny-vos", tmp_path / "again", progress=lambda _: None)
    assert export_onnx(network, "tiny-vos", again, progress=lambda _: None) == again  # a vosrt export is replaced
    with pytest.raises(ValueError, match="holds tiny-vos, not cutie-small"):
        vosrt.load("cutie-small", export_dir=export_dir)
