"""``vosrt segment`` on image folders, videos and cameras; ``vosrt eval``; their one-line errors."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import SHARED, SYNTHETIC, require_shared
from vosrt import io
from vosrt.cli import main

JUDO_IMAGES = SHARED / "data" / "davis-examples" / "images" / "judo"
JUDO_MASKS = SHARED / "data" / "davis-examples" / "masks" / "judo"
FAST = ["--max-internal-size", "96", "--max-frames", "4"]  # 4 frames at 96x170 inside the network


@pytest.fixture
def weights(seeded_weights):
    return str(seeded_weights("cutie-small"))


def _judo_mp4(path, frames: int = 4, fps: float = 12.0):
    first = io.read_rgb(JUDO_IMAGES / "00000.jpg")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (first.shape[1], first.shape[0]))
    for frame in sorted(JUDO_IMAGES.glob("*.jpg"))[:frames]:
        writer.write(cv2.cvtColor(io.read_rgb(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _video_info(path) -> tuple[float, int, int, int]:
    """(fps, frames read, height, width)."""
    capture = cv2.VideoCapture(str(path))
    fps, count, shape = capture.get(cv2.CAP_PROP_FPS), 0, None
    while True:
        ok, image = capture.read()
        if not ok:
            break
        count, shape = count + 1, image.shape
    capture.release()
    return fps, count, shape[0], shape[1]


def test_segment_judo_folder_writes_pngs_and_overlay_at_source_size(weights, tmp_path, capsys):
    require_shared()
    out, overlay = tmp_path / "judo", tmp_path / "judo.mp4"
    code = main(["segment", "cutie-small", "--weights", weights, "--input", str(JUDO_IMAGES), "--masks",
                 str(JUDO_MASKS), "--output", str(out), "--overlay", str(overlay), "--fps", "8", *FAST])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png"]
    first = Image.open(out / "00000.png")
    assert first.mode == "P" and first.size == (854, 480)
    given = np.asarray(Image.open(JUDO_MASKS / "00000.png"))
    assert (np.asarray(first) != given).mean() < 0.01  # the mask, through the 96-pixel internal size and back
    assert _video_info(overlay) == (8.0, 4, 480, 854)
    assert "wrote 4 label maps" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*")), "staging files left behind"


def test_segment_several_inputs_together_writes_each_as_alone(weights, tmp_path, capsys):
    """judo and 3 frames of synthetic-shapes as two streams of one batch: each input's label maps are
    those it gets alone (frames of different sizes share no call, so to the bit); synthetic ends first."""
    require_shared()
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    for i in range(3):
        shutil.copy(SYNTHETIC / "images" / f"{i:05d}.png", shapes)
    inputs = {"judo": (JUDO_IMAGES, JUDO_MASKS), "shapes": (shapes, SYNTHETIC / "masks" / "00000.png")}
    together, alone = tmp_path / "together", tmp_path / "alone"
    argv = [a for images, masks in inputs.values() for a in ("--input", str(images), "--masks", str(masks))]
    assert main(["segment", "cutie-small", "--weights", weights, *argv, "--output", str(together / "judo"),
                 "--output", str(together / "shapes"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "segmented 4 frames of" in out and "segmented 3 frames of" in out and "2 streams: 7 frames" in out
    for name, (images, masks) in inputs.items():
        assert main(["segment", "cutie-small", "--weights", weights, "--input", str(images), "--masks", str(masks),
                     "--output", str(alone / name), *FAST]) == 0
        names = sorted(p.name for p in (alone / name).iterdir())
        assert names == sorted(p.name for p in (together / name).iterdir())
        for png in names:
            np.testing.assert_array_equal(np.asarray(Image.open(together / name / png)),
                                          np.asarray(Image.open(alone / name / png)))


def test_segment_mp4_keeps_frame_rate_and_size(weights, tmp_path):
    require_shared()
    video = _judo_mp4(tmp_path / "judo-in.mp4", frames=4, fps=12.0)
    out, overlay = tmp_path / "masks-out", tmp_path / "overlay.avi"
    code = main(["segment", "cutie-small", "--weights", weights, "--input", str(video),
                 "--masks", str(JUDO_MASKS / "00000.png"), "--output", str(out), "--overlay", str(overlay), *FAST])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert Image.open(out / "00003.png").size == (854, 480)
    assert _video_info(overlay) == (12.0, 4, 480, 854)
    labels = np.asarray(Image.open(out / "00001.png"))
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels > 0).any()


def test_overlay_blends_palette_colours_on_objects(tmp_path):
    image = np.full((32, 48, 3), 100, np.uint8)
    labels = np.zeros((32, 48), np.int64)
    labels[8:24, 8:24] = 1
    with io.overlay_video(tmp_path / "o.avi", 5.0, (32, 48)) as writer:
        writer.write(image, labels)
    ok, frame = cv2.VideoCapture(str(tmp_path / "o.avi")).read()
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(int)
    assert np.abs(rgb[2, 2] - 100).max() <= 8  # background unchanged (MJPG is lossy)
    assert np.abs(rgb[16, 16] - (np.array([128, 0, 0]) + 100) / 2).max() <= 8  # label 1 is VOC red


def _one_error_line(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_unreadable_video_is_one_line(weights, tmp_path, capfd):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    assert main(["segment", "cutie-small", "--weights", weights, "--input", str(bad), "--masks", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 2
    assert _one_error_line(capfd).startswith(f"vosrt segment: error: cannot read video {bad}")
    assert not (tmp_path / "o").exists()


def test_missing_camera_is_one_line(weights, tmp_path, capfd):
    assert main(["segment", "cutie-small", "--weights", weights, "--input", "57", "--masks", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 2
    assert _one_error_line(capfd) == ("vosrt segment: error: camera 57 is not available "
                                      "(no device, or it delivers no frames)")


def test_mask_of_wrong_size_for_a_video_is_one_line(weights, tmp_path, capfd):
    require_shared()
    video = _judo_mp4(tmp_path / "v.mp4", frames=2)
    mask = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 120), np.uint8), mode="P").save(mask)
    assert main(["segment", "cutie-small", "--weights", weights, "--input", str(video), "--masks", str(mask),
                 "--overlay", str(tmp_path / "o.mp4")]) == 2
    assert _one_error_line(capfd).startswith(f"vosrt segment: error: mask {mask} is 100x120 but the frame is 480x854 ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png", "v.mp4"]


def test_failure_mid_video_leaves_no_outputs(weights, tmp_path, capfd):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(3):
        shutil.copy(SYNTHETIC / "images" / f"{i:05d}.png", images)
    shutil.copy(SYNTHETIC / "masks" / "00000.png", masks)
    Image.fromarray(np.zeros((50, 50), np.uint8), mode="P").save(masks / "00002.png")  # bad mask at frame 2
    out, overlay = tmp_path / "out", tmp_path / "o.mp4"
    assert main(["segment", "cutie-small", "--weights", weights, "--input", str(images), "--masks", str(masks),
                 "--output", str(out), "--overlay", str(overlay), "--max-internal-size", "96"]) == 2
    assert "is 50x50 but the frame is 240x320" in capfd.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks"]


@pytest.mark.parametrize("argv, message", [
    (["--input", "/nonexistent/clip"], "input not found: /nonexistent/clip"),
    (["--input", "IMAGES", "--masks", "/nonexistent/m.png"], "mask file or folder not found"),
    (["--input", "IMAGES", "--no-output"], "nothing to write"),
    (["--input", "IMAGES", "--input", "IMAGES"], "--masks given 1 time(s) for 2 --input"),
])
def test_segment_argument_errors_are_one_line(argv, message, weights, tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SYNTHETIC / "images" / "00000.png", images)
    argv = [str(images) if a == "IMAGES" else a for a in argv]
    outputs = [] if "--no-output" in argv else ["--output", str(tmp_path / "o")]
    argv = [a for a in argv if a != "--no-output"]
    if "--masks" not in argv:
        argv += ["--masks", str(SYNTHETIC / "masks" / "00000.png")]
    assert main(["segment", "cutie-small", "--weights", weights, *argv, *outputs]) == 2
    assert message in _one_error_line(capfd)


# -- eval ----------------------------------------------------------------------------------

def _shifted_prediction(truth, out, shift: int = 3):
    """The truth label maps moved ``shift`` pixels right: a prediction with known errors."""
    out.mkdir(parents=True)
    for path in sorted(truth.glob("*.png")):
        labels, palette = io.read_label_map(path)
        io.write_label_map(out / path.name, np.roll(labels, shift, axis=1), palette)
    return out


def test_eval_jf_equals_vos_benchmark_directly(tmp_path, capsys):
    require_shared()
    from vos_benchmark.benchmark import benchmark

    truth = SYNTHETIC / "truth"
    pred = _shifted_prediction(truth, tmp_path / "pred" / "shapes")
    assert main(["eval", "--pred", str(pred), "--gt", str(truth), "--json", str(tmp_path / "jf.json")]) == 0
    ours = json.loads((tmp_path / "jf.json").read_text())
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "shapes").symlink_to(truth, target_is_directory=True)
    (jf,), (j,), (f,), _ = benchmark([str(tmp_path / "gt")], [str(tmp_path / "pred")], num_processes=1, verbose=False)
    assert (ours["J&F"], ours["J"], ours["F"]) == pytest.approx((jf, j, f), abs=1e-9)
    assert 20 < ours["J&F"] < 99  # the shift costs something, but not everything
    assert f"{jf:6.1f}" in capsys.readouterr().out
    assert {o["object"] for o in ours["objects"]} == {1, 2, 3}
    assert not (pred / "results.csv").exists(), "vos-benchmark's csv must not land in the user's folder"


def _sparse_truth(tmp_path, keep: dict[str, list[int]]):
    """(full prediction, ground truth of only the frames in ``keep``, each holding only its listed objects)."""
    truth, pred = SYNTHETIC / "truth", tmp_path / "pred"
    shutil.copytree(truth, pred)
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    for frame, objects in keep.items():
        labels, palette = io.read_label_map(truth / f"{frame}.png")
        io.write_label_map(sparse / f"{frame}.png", np.where(np.isin(labels, objects), labels, 0), palette)
    return pred, sparse


def test_eval_says_what_it_measured(tmp_path, capfd):
    """Ground truth on 4 of 40 frames (like the sample clip's masks): the frames scored, the frames
    without ground truth, the objects in no scored frame, and a warning that the truth is sparse."""
    require_shared()
    pred, sparse = _sparse_truth(tmp_path, {"00000": [1], "00010": [1, 2], "00020": [2], "00030": [3]})
    assert main(["eval", "--pred", str(pred), "--gt", str(sparse), "--json", str(tmp_path / "jf.json")]) == 0
    out, err = capfd.readouterr()
    assert "scored 2 frame(s) (00010, 00020) of the 4 with ground truth; 36 of the 40 predicted frames have none" in out
    assert "object 3: not in the table, its ground truth is only in unscored frame(s) 00030" in out
    assert "object 1:" not in out  # in 00010, scored
    assert err.startswith("vosrt eval: warning: sparse ground truth: the J&F of sparse rests on 2 of its 40 "
                          "predicted frames, with ground truth on 4; the first and last are skipped")
    report = json.loads((tmp_path / "jf.json").read_text())
    assert {o["object"] for o in report["objects"]} == {1, 2}
    assert report["coverage"]["sparse"]["unscored_objects"] == {"3": ["00030"]}
    assert report["coverage"]["sparse"]["sparse"] is True


def test_eval_of_first_frame_only_ground_truth_is_an_error(tmp_path, capfd):
    """DAVIS test sets annotate the first frame only: nothing to score under the DAVIS protocol."""
    require_shared()
    pred, sparse = _sparse_truth(tmp_path, {"00000": [1, 2, 3]})
    assert main(["eval", "--pred", str(pred), "--gt", str(sparse)]) == 2
    assert _one_error_line(capfd) == ("vosrt eval: error: no frame to score: the ground truth holds 1 frame(s) of "
                                      "sparse; the first and last are skipped (DAVIS protocol; --all-frames keeps them)")


def test_eval_of_full_ground_truth_does_not_warn(tmp_path, capfd):
    require_shared()
    truth = SYNTHETIC / "truth"
    assert main(["eval", "--pred", str(_shifted_prediction(truth, tmp_path / "pred")), "--gt", str(truth)]) == 0
    out, err = capfd.readouterr()
    assert "scored 38 frame(s)" in out and "0 of the 40 predicted frames have none" in out
    assert "warning" not in err and "Traceback" not in err


def test_eval_compare_gives_per_frame_iou(tmp_path):
    require_shared()
    truth = SYNTHETIC / "truth"
    pred = _shifted_prediction(truth, tmp_path / "shifted")
    assert main(["eval", "--compare", str(truth), str(truth), "--json", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["frames"] == 40 and same["min_iou"] == 1.0 and same["mean_pixel_agreement"] == 1.0
    assert main(["eval", "--compare", str(truth), str(pred), "--json", str(tmp_path / "shift.json")]) == 0
    shifted = json.loads((tmp_path / "shift.json").read_text())
    a, _ = io.read_label_map(truth / "00007.png")
    b, _ = io.read_label_map(pred / "00007.png")
    objects = [o for o in np.unique(a) if o]
    expected = np.mean([((a == o) & (b == o)).sum() / ((a == o) | (b == o)).sum() for o in objects])
    frame7 = next(f for f in shifted["per_frame"] if f["frame"] == "00007")
    assert frame7["iou"] == pytest.approx(expected)
    assert shifted["mean_iou"] < 1.0


def test_eval_errors_are_one_line(tmp_path, capfd):
    require_shared()
    truth = SYNTHETIC / "truth"
    pred = _shifted_prediction(truth, tmp_path / "pred")
    (pred / "00012.png").unlink()
    assert main(["eval", "--pred", str(pred), "--gt", str(truth)]) == 2
    line = _one_error_line(capfd)
    assert "no prediction" in line and line.endswith("00012.png")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="P").save(pred / "00012.png")
    assert main(["eval", "--pred", str(pred), "--gt", str(truth)]) == 2
    assert "is 10x10 but the ground truth is 240x320" in _one_error_line(capfd)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--pred", str(empty), "--gt", str(truth)]) == 2
    assert "no PNG label maps in" in _one_error_line(capfd)
    assert main(["eval", "--pred", str(pred)]) == 2
    assert "give either --pred DIR --gt DIR, or --compare DIR_A DIR_B" in _one_error_line(capfd)


class _FakeCamera(io.FrameSource):
    """An endless stream (a camera) whose user presses Ctrl-C after ``frames`` frames."""

    description, fps, length, endless = "fake camera", 15.0, None, True

    def __init__(self, frames: int):
        self.frames = frames

    def __iter__(self):
        for i in range(self.frames):
            yield io.Frame(f"{i:05d}", np.full((32, 48, 3), 10 * i, np.uint8))
        raise KeyboardInterrupt


class _EchoSession:
    """Stands in for a session: the first mask, then the same labels every frame."""

    def step(self, image, mask=None, end=False):
        if mask is not None:
            self.labels = mask
        return self.labels

    def to_mask(self, labels):
        return labels.astype(np.uint8)


def test_ctrl_c_ends_a_camera_stream_and_keeps_the_outputs(tmp_path):
    from vosrt import pipeline

    mask = np.zeros((32, 48), np.uint8)
    mask[4:12, 4:20] = 2
    io.write_label_map(tmp_path / "first.png", mask)
    result = pipeline.segment(_EchoSession, _FakeCamera(3), tmp_path / "first.png", output=tmp_path / "out",
                              overlay=tmp_path / "cam.avi")
    assert result.stopped and result.frames == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "00002.png")), mask)
    assert _video_info(tmp_path / "cam.avi") == (15.0, 3, 32, 48)
