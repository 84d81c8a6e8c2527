"""``vosrt eval``: J&F against ground truth (DAVIS protocol, computed by the ``vos-benchmark``
package) and per-frame IoU agreement between two prediction folders.

A folder is either one video (PNG label maps directly inside) or a dataset (one sub-folder
of PNGs per video); both sides must have the same form. Ground truth as DAVIS gives it is
scored as the DAVIS toolkit scores it: label 255 is void (those pixels count for no object, in
the ground truth and in the prediction alike), and a ground-truth mask a few pixels off the
frame size is aligned as the official code aligns masks (:func:`vosrt.runtime.geometry.mask_on_frame`).
"""
from __future__ import annotations

import contextlib
import io as text_io
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vosrt import inputs, io
from vosrt.runtime.geometry import VosrtWarning
from vosrt.runtime.geometry import ALIGNMENT_RULE, alignable, mask_on_frame

VOID = 255  # DAVIS: pixels of the ground truth that are scored for no object
SPARSE = 0.5  # ground truth scored on fewer than this share of the predicted frames: a warning


@dataclass
class Coverage:
    """What the J&F of one video rests on. ``predicted``: how many frames have a prediction;
    ``truth``: the frames (names without .png) with ground truth; ``scored``: those scored (all
    but the first and last under the DAVIS protocol); ``objects``: object id -> the ground-truth
    frames that hold it. Only objects in a scored frame's ground truth get a score."""

    predicted: int
    truth: list[str]
    scored: list[str]
    objects: dict[int, list[str]] = field(default_factory=dict)

    @property
    def unscored_objects(self) -> dict[int, list[str]]:
        """Objects in the ground truth of no scored frame -> the frames that hold them."""
        scored = set(self.scored)
        return {obj: frames for obj, frames in self.objects.items() if not scored & set(frames)}

    @property
    def sparse(self) -> bool:
        return len(self.scored) < SPARSE * self.predicted


@dataclass
class JFScore:
    """Scores in percent: ``jf`` = (J + F) / 2 over all objects of all videos;
    ``objects``: (video, object id) -> (J, F); ``coverage``: video -> what was scored."""

    jf: float
    j: float
    f: float
    objects: dict[tuple[str, int], tuple[float, float]]
    coverage: dict[str, Coverage] = field(default_factory=dict)


def videos_in(folder: str | Path) -> dict[str, Path]:
    """Video name -> folder of PNG label maps: the folder itself when it holds PNGs, else its
    sub-folders that do."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    if label_maps(folder):
        return {folder.resolve().name: folder}
    videos = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and label_maps(p)}
    if not videos:
        raise ValueError(f"no PNG label maps in {folder} or in its sub-folders")
    return videos


def label_maps(folder: Path) -> dict[str, Path]:
    """The PNG label maps of ``folder`` by frame name (``.png`` in any case; two of one name are
    an error: :func:`vosrt.inputs.files_by_name`)."""
    return inputs.files_by_name(folder.iterdir(), {".png"}, "label maps")


def jf_score(pred: str | Path, gt: str | Path, skip_first_and_last: bool = True) -> JFScore:
    """J&F of the predictions in ``pred`` against the ground truth in ``gt``, computed by
    ``vos_benchmark.benchmark`` (first and last frame skipped, as in DAVIS semi-supervised
    evaluation, unless ``skip_first_and_last`` is False). Every ground-truth frame needs a
    prediction of the same size; predictions without ground truth are ignored. Warns
    (:class:`VosrtWarning`) when a video's ground truth is sparse (scored frames fewer than half
    the predicted ones, e.g. DAVIS test sets annotate the first frame only); ValueError when no
    frame of any video can be scored."""
    try:
        from vos_benchmark.benchmark import benchmark
    except ImportError:
        raise RuntimeError("vosrt eval needs vos-benchmark: pip install 'vosrt[eval]'") from None
    gt_videos = videos_in(gt)
    pred_videos = _paired(videos_in(pred), gt_videos)
    with tempfile.TemporaryDirectory(prefix="vosrt-eval-") as work:
        # vos-benchmark reads <root>/<video>/*.png (and writes results.csv into the prediction
        # root): give it roots of prepared copies, so the user's folders stay as they are.
        roots = {side: Path(work) / side for side in ("pred", "gt")}
        coverage = {name: _prepare_video(gt_folder, pred_videos[name], roots["gt"] / name, roots["pred"] / name,
                                         skip_first_and_last) for name, gt_folder in gt_videos.items()}
        _check_coverage(coverage, skip_first_and_last)
        with contextlib.redirect_stdout(text_io.StringIO()), _pool_workers_end_quietly():
            (jf,), (j,), (f,), (per_video,) = benchmark([str(roots["gt"])], [str(roots["pred"])], num_processes=1,
                                                        verbose=False, skip_first_and_last=skip_first_and_last)
    objects = {(video, int(obj)): (float(ious[obj]), float(fs[obj]))
               for video, (ious, fs) in per_video.items() for obj in ious}
    return JFScore(float(jf), float(j), float(f), objects, coverage)


@contextlib.contextmanager
def _pool_workers_end_quietly() -> Iterator[None]:
    """vos-benchmark's worker processes (forked within the block) exit quietly on the SIGTERM with which
    its pool ends them, instead of running this process's handler (the CLI's raises, and each worker
    printed a traceback); this process keeps its handler."""
    owner, previous = os.getpid(), signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if os.getpid() != owner:
            os._exit(0)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_coverage(coverage: dict[str, Coverage], skip_first_and_last: bool) -> None:
    """ValueError when no video has a frame to score; a warning per video with sparse ground truth."""
    skipped = "; the first and last are skipped (DAVIS protocol; --all-frames keeps them)" if skip_first_and_last \
        else ""
    if not any(c.scored for c in coverage.values()):
        raise ValueError("no frame to score: the ground truth holds " + ", ".join(
            f"{len(c.truth)} frame(s) of {name}" for name, c in coverage.items()) + skipped)
    for name, c in coverage.items():
        if c.sparse:
            warnings.warn(f"sparse ground truth: the J&F of {name} rests on {len(c.scored)} of its {c.predicted} "
                          f"predicted frames, with ground truth on {len(c.truth)}{skipped}. DAVIS test sets "
                          "annotate only the first frame, which scores nothing", VosrtWarning, stacklevel=3)


def _paired(pred_videos: dict[str, Path], gt_videos: dict[str, Path]) -> dict[str, Path]:
    """Prediction folder for each ground-truth video (one video against one: any names)."""
    if len(gt_videos) == 1 and len(pred_videos) == 1:
        return {next(iter(gt_videos)): next(iter(pred_videos.values()))}
    missing = sorted(set(gt_videos) - set(pred_videos))
    if missing:
        raise ValueError(f"no predictions for video(s) {', '.join(missing)}")
    return {name: pred_videos[name] for name in gt_videos}


def _prepare_video(gt_folder: Path, pred_folder: Path, gt_out: Path, pred_out: Path,
                   skip_first_and_last: bool) -> Coverage:
    """Copies of each ground-truth label map and its prediction as vos-benchmark scores them
    (what it would end the process over raised as errors first): every ground-truth frame needs
    a prediction, both label maps (not RGB), of the same size or alignable; void pixels cleared in both.
    Returns what will be scored (vos-benchmark scores the ground-truth frames in name order, the
    first and last skipped with ``skip_first_and_last``)."""
    gt_out.mkdir(parents=True)
    pred_out.mkdir(parents=True)
    predictions = label_maps(pred_folder)
    truth_maps = label_maps(gt_folder)
    truth_frames = list(truth_maps)
    coverage = Coverage(predicted=len(predictions), truth=truth_frames,
                        scored=truth_frames[1:-1] if skip_first_and_last else truth_frames)
    for frame, gt_path in truth_maps.items():
        pred_path = predictions.get(frame, pred_folder / gt_path.name)
        if not pred_path.is_file():
            raise ValueError(f"no prediction {pred_path} for the ground truth {gt_path}")
        truth, _ = io.read_label_map(gt_path)
        prediction, _ = io.read_label_map(pred_path)
        truth = _aligned_truth(truth, prediction.shape, gt_path, pred_path)
        void = truth == VOID
        truth[void], prediction[void] = 0, 0
        for obj in np.unique(truth[truth != 0]).tolist():
            coverage.objects.setdefault(int(obj), []).append(frame)
        _save_labels(gt_out / f"{frame}.png", truth)
        _save_labels(pred_out / f"{frame}.png", prediction)
    return coverage


def _aligned_truth(truth: np.ndarray, size: tuple[int, int], gt_path: Path, pred_path: Path) -> np.ndarray:
    """``truth`` at the prediction's ``size``: as it is, or aligned as the official code aligns a mask
    a few pixels off the frame size (zero-padded or cropped at its own padding); other sizes are errors."""
    if truth.shape == size:
        return truth
    if not alignable(truth.shape, size):
        raise ValueError(f"prediction {pred_path} is {size[0]}x{size[1]} but the ground truth is "
                         f"{truth.shape[0]}x{truth.shape[1]} ({ALIGNMENT_RULE})")
    left, right, top, bottom = mask_on_frame(truth.shape, size)
    padded = np.pad(truth, ((max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))))
    return padded[max(-top, 0):padded.shape[0] - max(-bottom, 0), max(-left, 0):padded.shape[1] - max(-right, 0)]


def _save_labels(path: Path, labels: np.ndarray) -> None:
    """A label map as vos-benchmark reads it (one value per pixel), quickly."""
    from PIL import Image

    dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
    Image.fromarray(labels.astype(dtype)).save(path, compress_level=1)


@dataclass
class FrameAgreement:
    """``iou``: mean over the objects present in either label map of their IoU (1.0 when
    neither has an object); ``pixels``: fraction of pixels with the same label."""

    video: str
    frame: str
    iou: float
    pixels: float


def compare_predictions(a: str | Path, b: str | Path) -> list[FrameAgreement]:
    """Per-frame agreement of two prediction folders (e.g. an fp16 engine against eager), over
    the frames both have. Label maps of a frame must have the same size."""
    videos_a, videos_b = videos_in(a), videos_in(b)
    if len(videos_a) == 1 and len(videos_b) == 1:
        videos_b = _paired(videos_b, videos_a)
    results = []
    for video in sorted(set(videos_a) & set(videos_b)):
        frames_b = label_maps(videos_b[video])
        for frame, path_a in label_maps(videos_a[video]).items():
            if frame in frames_b:
                results.append(_agreement(video, path_a, frames_b[frame]))
    if not results:
        raise ValueError(f"{a} and {b} have no label map (video/frame name) in common")
    return results


def _agreement(video: str, path_a: Path, path_b: Path) -> FrameAgreement:
    labels_a, _ = io.read_label_map(path_a)
    labels_b, _ = io.read_label_map(path_b)
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"{path_a} is {labels_a.shape[0]}x{labels_a.shape[1]} but {path_b} is "
                         f"{labels_b.shape[0]}x{labels_b.shape[1]}")
    objects = np.setdiff1d(np.union1d(np.unique(labels_a), np.unique(labels_b)), [0])
    ious = [np.logical_and(labels_a == o, labels_b == o).sum() / np.logical_or(labels_a == o, labels_b == o).sum()
            for o in objects]
    return FrameAgreement(video, path_a.stem, float(np.mean(ious)) if ious else 1.0,
                          float((labels_a == labels_b).mean()))



# -- reports -------------------------------------------------------------------------------

def score_report(score: JFScore) -> dict:
    """JSON-ready form of a :class:`JFScore`."""
    return {"metric": "J&F (DAVIS protocol, vos-benchmark)", "J&F": score.jf, "J": score.j, "F": score.f,
            "objects": [{"video": video, "object": obj, "J": j, "F": f, "J&F": (j + f) / 2}
                        for (video, obj), (j, f) in sorted(score.objects.items())],
            "coverage": {video: asdict(c) | {"unscored_objects": c.unscored_objects, "sparse": c.sparse}
                         for video, c in score.coverage.items()}}


def format_score(score: JFScore) -> str:
    """The table (a row per scored object, then the global figures), then what each video's
    figures rest on: frames with and without ground truth, objects that got no score and why."""
    lines = [f"{'video':20} {'obj':>3} {'J&F':>6} {'J':>6} {'F':>6}"]
    lines += [f"{video:20} {obj:>3} {(j + f) / 2:6.1f} {j:6.1f} {f:6.1f}"
              for (video, obj), (j, f) in sorted(score.objects.items())]
    lines.append(f"{'global':20} {'':>3} {score.jf:6.1f} {score.j:6.1f} {score.f:6.1f}")
    for video, c in score.coverage.items():
        lines.append(f"{video}: scored {len(c.scored)} frame(s) ({_names(c.scored)}) of the {len(c.truth)} with "
                     f"ground truth; {c.predicted - len(c.truth)} of the {c.predicted} predicted frames have none "
                     "(not scored)")
        for obj, frames in c.unscored_objects.items():
            lines.append(f"  object {obj}: not in the table, its ground truth is only in unscored frame(s) "
                         f"{_names(frames)}")
    return "\n".join(lines)


def _names(frames: list[str], most: int = 6) -> str:
    return ", ".join(frames[:most]) + (f", ... ({len(frames)})" if len(frames) > most else "") if frames else "none"


def agreement_report(frames: list[FrameAgreement]) -> dict:
    """Mean and worst IoU agreement over the frames, and every frame."""
    worst = min(frames, key=lambda a: a.iou)
    return {"metric": "per-frame IoU agreement (mean over objects)", "frames": len(frames),
            "mean_iou": float(np.mean([a.iou for a in frames])),
            "min_iou": worst.iou, "min_iou_frame": f"{worst.video}/{worst.frame}",
            "mean_pixel_agreement": float(np.mean([a.pixels for a in frames])),
            "per_frame": [asdict(a) for a in frames]}


def format_agreement(report: dict, worst: int = 5) -> str:
    frames = sorted(report["per_frame"], key=lambda a: a["iou"])[:worst]
    lines = [f"{report['frames']} frames compared: mean IoU {report['mean_iou']:.4f}, "
             f"worst {report['min_iou']:.4f} ({report['min_iou_frame']}), "
             f"pixels with the same label {100 * report['mean_pixel_agreement']:.2f}%",
             f"lowest {len(frames)} frames:"]
    lines += [f"  {a['video']}/{a['frame']}  IoU {a['iou']:.4f}  same label {100 * a['pixels']:.2f}%" for a in frames]
    return "\n".join(lines)
