"""``vosrt segment``: outputs, palette, and one-line errors."""
from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from helpers import SYNTHETIC
from vosrt.cli import main


def _clip(tmp_path, frames: int = 3):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(frames):
        shutil.copy(SYNTHETIC / "images" / f"{i:05d}.png", images)
    shutil.copy(SYNTHETIC / "masks" / "00000.png", masks)
    return images, masks


def test_segment_writes_palette_label_maps(seeded_weights, tmp_path, capsys):
    images, masks = _clip(tmp_path)
    out = tmp_path / "out"
    code = main(["segment", "cutie-small", "--weights", str(seeded_weights("cutie-small")), "--images", str(images),
                 "--masks", str(masks), "--output", str(out), "--mem-every", "2"])
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["00000.png", "00001.png", "00002.png"]
    first = Image.open(out / "00000.png")
    assert first.mode == "P" and first.size == (320, 240)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(Image.open(masks / "00000.png")))
    assert "wrote 3 label maps" in capsys.readouterr().out


def test_segment_errors_are_one_line(seeded_weights, tmp_path, capsys):
    images, masks = _clip(tmp_path, frames=1)
    weights = str(seeded_weights("cutie-small"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", "cutie-small", "--weights", weights, "--images", str(empty), "--masks", str(masks),
                 "--output", str(tmp_path / "o")]) == 2
    assert main(["segment", "cutie-small", "--weights", weights, "--images", str(images), "--masks", str(empty),
                 "--output", str(tmp_path / "o")]) == 2
    Image.fromarray(np.zeros((100, 100), np.uint8), mode="P").save(masks / "00000.png")
    assert main(["segment", "cutie-small", "--weights", weights, "--images", str(images), "--masks", str(masks),
                 "--output", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("vosrt segment: error: no images")
    assert lines[1].startswith("vosrt segment: error: no mask for the first frame")
    assert "is 100x100 but the frame is 240x320" in lines[-1]
    assert not any("Traceback" in line for line in lines)


def test_segment_runs_jointformer(seeded_weights, tmp_path, capsys):
    images, masks = _clip(tmp_path, frames=2)
    out = tmp_path / "out"
    code = main(["segment", "jointformer", "--weights", str(seeded_weights("jointformer")), "--images", str(images),
                 "--masks", str(masks), "--output", str(out), "--max-internal-size", "64", "--mem-every", "2",
                 "--topk-block", "last_block"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]
    given = np.asarray(Image.open(masks / "00000.png"))
    first = np.asarray(Image.open(out / "00000.png"))  # the given mask, through the 64-pixel network size and back
    assert first.shape == given.shape and (first == given).mean() > 0.99
    second = np.asarray(Image.open(out / "00001.png"))
    assert second.shape == given.shape and set(np.unique(second)) <= set(np.unique(given))
    assert "wrote 2 label maps" in capsys.readouterr().out
