"""The output rules (:mod:`vosrt.runtime.safe_write`), label-map palettes, the overlay's codec and the
official mask alignment, piece by piece (``test_bad_inputs.py`` runs them through the commands)."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from vosrt import io
from vosrt.runtime import safe_write
from vosrt.runtime.geometry import VosrtWarning
from vosrt.runtime.geometry import alignable, check_mask_size, mask_on_frame


def test_protected_folders(tmp_path, monkeypatch):
    (tmp_path / "home" / "work").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "home" / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    for path, why in ((".", "the current folder"), ("..", "a parent of the current folder"), ("/", "a parent")):
        with pytest.raises(ValueError, match=why):
            safe_write.check_not_protected(path, "--output")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ValueError, match="a parent of the current folder"):
        safe_write.check_not_protected(tmp_path / "home", "--output")
    safe_write.check_not_protected("new-folder", "--output")  # below the current folder: fine


def test_replaced_folder_keeps_the_old_one_when_the_block_fails(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "manifest.json").write_text('{"format": "vosrt-onnx/2"}')
    with pytest.raises(RuntimeError, match="boom"):
        with safe_write.replaced_folder(target, lambda _: True, "output", "a vosrt export") as staging:
            (staging / "half.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]


def test_replaced_folder_swaps_in_a_0755_folder(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.onnx").write_bytes(b"old")
    with safe_write.replaced_folder(target, lambda _: True, "output", "a vosrt export") as staging:
        (staging / "new.onnx").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert [p.name for p in target.iterdir()] == ["new.onnx"]
    assert target.stat().st_mode & 0o777 == safe_write.folder_mode() == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_staged_file_is_renamed_only_when_its_check_passes(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("before")

    def refuse(path):
        raise OSError("reads back wrong")

    with pytest.raises(OSError, match="reads back wrong"):
        with safe_write.staged_file(target, refuse) as partial:
            partial.write_text("after")
    assert target.read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    safe_write.write_text(target, "after")
    assert target.read_text() == "after" and target.stat().st_mode & 0o777 == safe_write.file_mode()


def test_staged_file_ignores_a_planted_link_at_the_old_fixed_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / ".out.json.partial").symlink_to(victim)
    safe_write.write_text(tmp_path / "out.json", "{}")
    assert victim.read_text() == "keep me" and (tmp_path / "out.json").read_text() == "{}"


def test_full_palette_keeps_the_given_colours_then_voc():
    palette = io.full_palette([1, 2, 3, 4, 5, 6, 7])  # two colours and a stray value
    assert len(palette) == 768 and palette[:6] == [1, 2, 3, 4, 5, 6] and palette[6:] == io.voc_palette()[6:]


def test_label_maps_are_8_bit_whatever_the_palette(tmp_path):
    labels = np.array([[0, 1, 5, 255]], np.uint8)
    io.write_label_map(tmp_path / "m.png", labels, [0, 0, 0, 255, 0, 0, 0, 255, 0])
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P" and len(image.getpalette()) == 768
        assert (np.asarray(image) == labels).all()


class _Writer:
    """cv2.VideoWriter that opens only for the fourcc codes in ``works``."""

    works: set[str] = set()

    def __init__(self, path, fourcc, fps, size):
        self.fourcc = fourcc

    def isOpened(self):  # noqa: N802 -- OpenCV's name
        return self.fourcc in {_fourcc(c) for c in self.works}

    def release(self):
        pass


def _fourcc(code: str) -> int:
    import cv2

    return cv2.VideoWriter_fourcc(*code)


@pytest.mark.parametrize("works, codec, warned", [({"avc1", "mp4v"}, "avc1", False), ({"mp4v"}, "mp4v", True)])
def test_overlay_is_h264_where_opencv_can_encode_it(monkeypatch, tmp_path, works, codec, warned):
    import cv2

    monkeypatch.setattr(_Writer, "works", works)
    monkeypatch.setattr(cv2, "VideoWriter", _Writer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer = io.OverlayVideoWriter(tmp_path / "o.mp4", io.OverlayVideoWriter.codecs(tmp_path / "o.mp4"), 10.0,
                                       (32, 48))
    assert writer.codec == codec
    assert [issubclass(w.category, VosrtWarning) and "H.264" in str(w.message) for w in caught] == \
        ([True] if warned else [])


def test_official_alignment_of_the_judo_mask():
    """853 px pads to 864 with 5 px on the left, like the 854 px frame: the mask gains one zero column
    on the right. A mask that pads to another multiple of 16 cannot be aligned."""
    assert mask_on_frame((480, 853), (480, 854)) == (0, 1, 0, 0)
    assert mask_on_frame((480, 852), (480, 854)) == (1, 1, 0, 0)
    assert mask_on_frame((479, 857), (480, 854)) == (-2, -1, 0, 1)  # wider: cropped; shorter: padded
    assert alignable((480, 849), (480, 854)) and not alignable((480, 848), (480, 854))
    with pytest.raises(ValueError, match="mask m.png is 480x848 but the frame is 480x854"):
        check_mask_size((480, 848), (480, 854), "mask m.png")


def _dead_process_tag() -> str:
    """The owner tag of a process that has ended (on this host)."""
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{child.stdout.strip()}@{safe_write.owner().partition('@')[2]}"


def test_a_claim_refuses_a_second_claim_and_goes_with_its_run(tmp_path):
    target = tmp_path / "new" / "out"
    with safe_write.claimed(target, "--output"):
        claim = tmp_path / "new" / ".out.vosrt-claim"
        assert claim.read_text().strip() == safe_write.owner()
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / ".out.vosrt-claim").write_text(f"1@{safe_write.owner().partition('@')[2]}\n")  # init: alive
        with pytest.raises(FileExistsError, match="being written by another vosrt run"):
            with safe_write.claimed(tmp_path / "other" / "out", "--output"):
                pass
    assert not (tmp_path / "new").exists()  # the claim and the folder made for it are gone


def test_a_claim_of_a_process_that_ended_is_taken_over(tmp_path):
    (tmp_path / ".out.vosrt-claim").write_text(_dead_process_tag() + "\n")
    with safe_write.claimed(tmp_path / "out", "--output"):
        assert (tmp_path / ".out.vosrt-claim").read_text().strip() == safe_write.owner()


def test_staging_of_a_process_that_ended_is_removed_by_the_next_run(tmp_path):
    dead, old = _dead_process_tag(), 2 * safe_write.STALE_SECONDS
    left = tmp_path / f".out.{dead}.abcdefgh.partial"
    (left / "sub").mkdir(parents=True)
    remote = tmp_path / ".out.7@elsewhere.abcdefgh.partial"
    remote.mkdir()
    fresh_remote = tmp_path / ".out.8@elsewhere.abcdefgh.partial"
    fresh_remote.mkdir()
    os.utime(remote, (remote.stat().st_atime - old, remote.stat().st_mtime - old))
    users = tmp_path / ".out.mine.partial"  # no owner tag: not vosrt's name, left alone
    users.write_text("keep")
    with safe_write.staged_folder(tmp_path / "out") as staging:
        assert safe_write.owner() in staging.name
    assert not left.exists() and not remote.exists()
    assert fresh_remote.exists() and users.read_text() == "keep"
