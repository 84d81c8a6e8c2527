"""The table of bad-input and fault cases (issues #16, #18 and #27), each run in a workspace of its own.

Every case does what a careful or careless user would (a command line, an API call, a signal, a
full disk, a download cut short) and states what must happen: a one-line error or a documented
behaviour. The runner then looks for what must never happen:

- **data loss**: a file the user had (planted by the case) is gone or changed;
- **silent wrong output**: the call succeeded but what it wrote or returned is wrong (or it
  accepted what it should have refused);
- **traceback**: an exception a user cannot act on escaped (a traceback, or an error that is not
  one of the user-error types), or a command ran on past a time limit;
- **partial files left**: a hidden, ``*.partial*`` or ``*.part`` file or folder the case did not
  plant, or an output of a failed command.

Anything else that is not what the case expects (a refusal of valid input, an error that does not
say what the case looks for) counts as **other**. ``tests/unit/test_bad_inputs.py`` runs each case
as a test; ``benchmarks/bad_inputs.py`` runs the whole table and prints the counts. Cases use
seeded official-layout weights, frames of 48x64 and a few frames, so the table runs in minutes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.server
import io as text_io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DAVIS = ROOT.parent / "shared" / "data" / "davis-examples"
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError, TypeError)
KINDS = ("data loss", "silent wrong output", "traceback", "partial files left", "other")
FRAME = (48, 64)


@dataclass
class Outcome:
    """What a command or an API call did: ``code`` (exit status; 0 or 2 for API calls: returned
    or raised a user error), ``error`` (the error lines, progress bars and warnings left out),
    ``warnings`` (warning lines), ``escaped`` (an exception that is not a user error), ``value``
    (an API call's result)."""

    code: int
    error: str = ""
    warnings: str = ""
    out: str = ""
    escaped: str | None = None
    value: object = None


@dataclass
class Workspace:
    """A fresh folder for one case, with seeded weights (``weights(model)``) and an ONNX export of
    them (``export()``, copied from one made once per run)."""

    root: Path
    weights: Callable[[str], Path]
    shared_export: Callable[[], Path]
    findings: list[tuple[str, str]] = field(default_factory=list)
    planted: dict[Path, bytes | None] = field(default_factory=dict)

    # -- what a case sets up ------------------------------------------------------------

    def path(self, relative: str) -> Path:
        return self.root / relative

    def plant(self, relative: str, data: bytes = b"the user's own data\n") -> Path:
        """A file of the user's: it must be there, unchanged, after the case."""
        path = self.path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.planted[path] = data
        return path

    def plant_link(self, relative: str, target: Path) -> Path:
        """A symbolic link the user (or an attacker) made; it may stay."""
        path = self.path(relative)
        path.symlink_to(target)
        self.planted[path] = None
        return path

    def clip(self, relative: str = "clip", frames: int = 3, size: tuple[int, int] = FRAME) -> tuple[Path, Path]:
        """An image folder of ``frames`` PNG frames and a mask folder with the first frame's mask
        (objects 1 and 2), both planted (user data)."""
        images, masks = self.path(f"{relative}/images"), self.path(f"{relative}/masks")
        for i in range(frames):
            self.plant(f"{relative}/images/{i:05d}.png", png_bytes(frame_image(i, size)))
        self.plant(f"{relative}/masks/00000.png", png_bytes(first_mask(size), palette=True))
        return images, masks

    def video(self, relative: str, frames: int = 4, size: tuple[int, int] = FRAME) -> Path:
        """An MJPG AVI of ``frames`` frames, planted."""
        import cv2

        path = self.path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size[1], size[0]))
        for i in range(frames):
            writer.write(frame_image(i, size)[..., ::-1].copy())
        writer.release()
        self.planted[path] = path.read_bytes()
        return path

    def export(self, relative: str = "export") -> Path:
        """A copy of the run's cutie-small ONNX export (top_k 30, max_mem_frames 3)."""
        target = self.path(relative)
        shutil.copytree(self.shared_export(), target)
        return target

    # -- running ------------------------------------------------------------------------

    def cli(self, *argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Outcome:
        """``vosrt ARGV`` (or ``export-engine ARGV[1:]`` when ARGV[0] is "export-engine") in this
        process, from ``cwd`` (default: the workspace)."""
        from vosrt.cli import export_engine_main, main

        argv = [str(a) for a in argv]
        entry, argv = (export_engine_main, argv[1:]) if argv[0] == "export-engine" else (main, argv)
        err, out = text_io.StringIO(), text_io.StringIO()
        with _in(cwd or self.root), _environment(env or {}), contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(out):
            try:
                code = entry(argv)
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 2
            except BaseException as escaped:  # noqa: BLE001 -- what the case looks for
                return Outcome(1, escaped=f"{type(escaped).__name__}: {escaped}", out=out.getvalue())
        return _outcome(code, err.getvalue(), out.getvalue())

    def api(self, call: Callable[[], object], cwd: Path | None = None) -> Outcome:
        """An API call: returned (code 0), raised a user error (code 2) or anything else (escaped)."""
        import warnings

        with _in(cwd or self.root), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = call()
            except USER_ERRORS as err:
                return Outcome(2, error=str(err), warnings=_warning_lines(caught))
            except BaseException as escaped:  # noqa: BLE001 -- what the case looks for
                return Outcome(1, escaped=f"{type(escaped).__name__}: {str(escaped)[:300]}")
        return Outcome(0, value=value, warnings=_warning_lines(caught))

    def subprocess_cli(self, *argv: str | Path, send: int | None = None, when: Callable[[], bool] | None = None,
                       limit_bytes: int | None = None, timeout: float = 240, env: dict[str, str] | None = None
                       ) -> Outcome:
        """``vosrt ARGV`` in a child process (``export-engine`` as above). ``send``: a signal sent
        once ``when()`` is true; ``limit_bytes``: the largest file it may write (RLIMIT_FSIZE, as
        a full disk); ``env``: variables set for it. Past ``timeout`` seconds it is killed and
        counted as escaped."""
        process, start = self.start_cli(*argv, limit_bytes=limit_bytes, env=env), time.monotonic()
        if send is not None:
            while not when() and process.poll() is None and time.monotonic() - start < timeout:
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(send)
        return self.finish(process, max(timeout - (time.monotonic() - start), 1))

    def start_cli(self, *argv: str | Path, limit_bytes: int | None = None, env: dict[str, str] | None = None
                  ) -> subprocess.Popen:
        """``vosrt ARGV`` started in a child process (see :meth:`subprocess_cli`); :meth:`finish` waits for it."""
        argv = [str(a) for a in argv]
        entry = "export_engine_main" if argv[0] == "export-engine" else "main"
        argv = argv[1:] if argv[0] == "export-engine" else argv
        code = f"import sys; from vosrt.cli import {entry}; sys.exit({entry}(sys.argv[1:]))"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
        return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=self.root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_child_setup(limit_bytes))

    def finish(self, process: subprocess.Popen, timeout: float = 240) -> Outcome:
        """What the child process of :meth:`start_cli` did; killed (and counted as escaped) past ``timeout``."""
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return Outcome(1, escaped=f"still running after {timeout:.0f} s")
        return _outcome(process.returncode, err, out)

    # -- what a case expects ------------------------------------------------------------

    def expect_error(self, outcome: Outcome, *fragments: str) -> None:
        """A clear refusal: one error line that holds every fragment (case-insensitive)."""
        if self._escaped(outcome):
            return
        if outcome.code == 0:
            self.findings.append(("silent wrong output", "accepted: expected an error"))
        elif len(outcome.error.strip().splitlines()) != 1:
            self.findings.append(("other", f"not one error line: {outcome.error.strip()[:300]!r}"))
        elif not all(f.lower() in outcome.error.lower() for f in fragments):
            self.findings.append(("other", f"error does not say {fragments}: {outcome.error.strip()[:300]!r}"))

    def expect_ok(self, outcome: Outcome, check: Callable[[], str | None] = lambda: None) -> None:
        """Success, and ``check()`` finds nothing wrong (it returns what is wrong, or None)."""
        if self._escaped(outcome):
            return
        if outcome.code != 0:
            self.findings.append(("other", f"refused: {outcome.error.strip()[:300]!r}"))
            return
        wrong = check()
        if wrong:
            self.findings.append(("silent wrong output", wrong))

    def expect(self, condition: bool, kind: str, detail: str) -> None:
        if not condition:
            self.findings.append((kind, detail))

    def _escaped(self, outcome: Outcome) -> bool:
        if outcome.escaped is not None or "Traceback" in outcome.error:
            self.findings.append(("traceback", outcome.escaped or outcome.error.strip()[-300:]))
            return True
        return False

    # -- after the case -----------------------------------------------------------------

    def audit(self) -> list[tuple[str, str]]:
        """The findings, with lost user files and left-over partial files added."""
        for path, data in self.planted.items():
            if data is not None and (not path.is_file() or path.is_symlink() or path.read_bytes() != data):
                self.findings.append(("data loss", f"{path.relative_to(self.root)} is gone or changed"))
        left = [p for p in self.root.rglob("*") if _looks_partial(p) and p not in self.planted
                and not any(parent in self.planted for parent in p.parents)]
        if left:
            self.findings.append(("partial files left", ", ".join(str(p.relative_to(self.root)) for p in left[:5])))
        return self.findings


def _looks_partial(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or ".partial" in name or name.endswith(".part")


def _outcome(code: int, err: str, out: str) -> Outcome:
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    progress = [line for line in lines if "frame/s" in line or "it/s" in line or "s/frame" in line
                or "B/s" in line or line.startswith(("segment:", "segment ", "0%"))]
    warning = [line for line in lines if ": warning:" in line or "Warning" in line]
    errors = [line for line in lines if line not in progress and line not in warning]
    return Outcome(code, error="\n".join(errors), warnings="\n".join(warning), out=out)


def _warning_lines(caught) -> str:
    return "\n".join(str(w.message) for w in caught)


@contextlib.contextmanager
def _in(folder: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _child_setup(limit: int | None) -> Callable[[], None]:
    """Before a child runs: Ctrl-C as in a terminal (a background job ignores SIGINT, and a child
    would inherit that), and, with ``limit``, the largest file it may write (a full disk)."""
    def apply() -> None:
        import resource

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


# -- data ------------------------------------------------------------------------------------

def frame_image(index: int, size: tuple[int, int] = FRAME) -> np.ndarray:
    """A smooth RGB frame with two discs that move a little from frame to frame."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1)
    for cy, cx, colour in ((h // 3, w // 3 + index, (250, 40, 40)), (2 * h // 3, 2 * w // 3 - index, (40, 40, 250))):
        image[(y - cy) ** 2 + (x - cx) ** 2 < (min(h, w) // 6) ** 2] = colour
    return image.astype(np.uint8)


def first_mask(size: tuple[int, int] = FRAME) -> np.ndarray:
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    labels = np.zeros(size, np.uint8)
    labels[(y - h // 3) ** 2 + (x - w // 3) ** 2 < (min(h, w) // 6) ** 2] = 1
    labels[(y - 2 * h // 3) ** 2 + (x - 2 * w // 3) ** 2 < (min(h, w) // 6) ** 2] = 2
    return labels


def png_bytes(array: np.ndarray, palette: bool = False, colours: list[int] | None = None) -> bytes:
    image = Image.fromarray(array, mode="P" if palette else None)
    if palette:
        image.putpalette(colours or [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (768 - 9))  # colours may be fewer
    buffer = text_io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_labels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def official_pad(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom): the official ``pad_divide_by(x, 16)`` of an image of ``size``."""
    (h, w), d = size, 16
    new_h, new_w = h + (d - h % d) % d, w + (d - w % d) % d
    return (new_w - w) // 2, new_w - w - (new_w - w) // 2, (new_h - h) // 2, new_h - h - (new_h - h) // 2


def official_alignment(mask: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """A mask smaller than the frame, at the frame's size as the official code sees it: padded by
    its own ``pad_divide_by``, then unpadded by the frame's."""
    left, right, top, bottom = official_pad(mask.shape)
    canvas = np.pad(mask, ((top, bottom), (left, right)))
    left, right, top, bottom = official_pad(frame_size)
    return canvas[top:canvas.shape[0] - bottom, left:canvas.shape[1] - right]


def count_frames(path: Path) -> int:
    import cv2

    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def first_frame_size(path: Path) -> tuple[int, int] | None:
    import cv2

    capture = cv2.VideoCapture(str(path))
    ok, image = capture.read()
    capture.release()
    return image.shape[:2] if ok else None


def fast(*extra: str) -> list[str]:
    """Options that keep a segment run short."""
    return ["--max-internal-size", "48", *extra]


# -- the cases -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    item: str  # the issue item it comes from: "18.1" ... "18.10", "16.align", "16.artifacts", ..., "17", "27.1" ...
    # "27.6" (27: outputs claimed, exit status, finite weights, bound exports, input normalisation, stale staging),
    # "extra"
    run: Callable[[Workspace], None]
    slow: bool = False  # runs a child process or a real export


CASES: list[Case] = []


def case(item: str, name: str | None = None, slow: bool = False):
    def register(fn: Callable[[Workspace], None]) -> Callable[[Workspace], None]:
        CASES.append(Case(name or fn.__name__.replace("_", "-"), item, fn, slow))
        return fn
    return register


def cases(item: str, names_and_args: list[tuple[str, tuple]], slow: bool = False):
    """One case per (name, args): ``fn(ws, *args)``."""
    def register(fn):
        for name, args in names_and_args:
            CASES.append(Case(name, item, lambda ws, _fn=fn, _args=args: _fn(ws, *_args), slow))
        return fn
    return register


def segment_argv(ws: Workspace, images: Path, masks: Path, *extra: str | Path) -> list[str | Path]:
    return ["segment", "cutie-small", "--weights", ws.weights("cutie-small"), "--input", images, "--masks", masks,
            *fast(), *extra]


def export_argv(ws: Workspace, output: str | Path, *extra: str | Path) -> list[str | Path]:
    return ["export-engine", "cutie-small", "--weights", ws.weights("cutie-small"), "--format", "onnx",
            "--max-mem-frames", "3", "--output", output, *extra]


def _manifest_is_fresh(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return f"{folder} holds no readable manifest"
    return None if manifest.get("format", "").startswith("vosrt-onnx") else "not an ONNX export manifest"


# 18.1 -- an export replaces only a vosrt export, never ., .., home or the working directory's parents

@case("18.1", "export-into-a-folder-of-user-files")
def _(ws):
    ws.plant("results/notes.txt")
    ws.plant("results/sub/data.csv")
    ws.expect_error(ws.cli(*export_argv(ws, "results")), "not a vosrt export")


@cases("18.1", [("export-output-dot", (".",)), ("export-output-dotdot", ("..",))])
def _(ws, output):
    ws.plant("work/thesis.tex")
    ws.plant("sibling.txt")
    ws.expect_error(ws.cli(*export_argv(ws, output), cwd=ws.path("work")), "never writes into it")


@case("18.1")
def export_output_is_a_parent_of_the_working_directory(ws):
    ws.plant("project/src/main.py")
    ws.path("project/src/deep").mkdir()
    ws.expect_error(ws.cli(*export_argv(ws, ws.path("project")), cwd=ws.path("project/src/deep")),
                    "parent of the current folder")


@case("18.1")
def export_output_is_the_home_folder(ws):
    ws.plant("home/.bashrc")
    ws.plant("home/photos/cat.jpg")
    ws.expect_error(ws.cli(*export_argv(ws, ws.path("home")), env={"HOME": str(ws.path("home"))}), "home folder")


@case("18.1")
def export_output_is_a_file(ws):
    ws.plant("model.onnx.txt")
    ws.expect_error(ws.cli(*export_argv(ws, "model.onnx.txt")), "not a folder")


@case("18.1")
def export_output_is_a_link_to_user_files(ws):
    ws.plant("data/keep.txt")
    ws.plant_link("out", ws.path("data"))
    ws.expect_error(ws.cli(*export_argv(ws, "out")), "symbolic link")


@case("18.1")
def export_api_into_a_folder_of_user_files(ws):
    from vosrt.api import build_network
    from vosrt.export.onnx import export_onnx

    ws.plant("results/keep.txt")
    network = build_network("cutie-small", ws.weights("cutie-small"))
    ws.expect_error(ws.api(lambda: export_onnx(network, "cutie-small", ws.path("results"), progress=lambda _: None)),
                    "not a vosrt export")


@case("18.1", slow=True)
def export_replaces_an_earlier_export(ws):
    previous = ws.export("export")
    (previous / "stale.onnx").write_bytes(b"old")
    outcome = ws.cli(*export_argv(ws, "export"))
    ws.expect_ok(outcome, lambda: _manifest_is_fresh(previous) or
                 ("the old export's files stayed" if (previous / "stale.onnx").exists() else None))


@case("18.1", slow=True)
def export_into_an_empty_folder_is_0755(ws):
    ws.path("empty").mkdir()
    outcome = ws.cli(*export_argv(ws, "empty"))
    ws.expect_ok(outcome, lambda: _manifest_is_fresh(ws.path("empty")) or
                 (None if ws.path("empty").stat().st_mode & 0o777 == 0o755 else
                  f"folder mode {oct(ws.path('empty').stat().st_mode & 0o777)}, not 0755"))


@case("18.1")
def engine_build_into_a_folder_of_user_files(ws):
    export = ws.export()
    ws.plant("engines/keep.txt")
    ws.expect_error(ws.cli("export-engine", "--from-onnx", export, "--output", "engines"), "not a vosrt export")


# 18.2 -- segment: no mixing, no writing into the inputs

@case("18.2")
def segment_into_a_non_empty_folder(ws):
    images, masks = ws.clip()
    ws.plant("out/00000.png", b"a stale prediction")
    ws.plant("out/00009.png", b"another stale prediction")
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--output", "out")), "not empty", "--overwrite")


@case("18.2")
def segment_overwrite_replaces_only_its_own_files(ws):
    images, masks = ws.clip()
    ws.path("out").mkdir()
    ws.path("out/00001.png").write_bytes(b"a stale prediction of frame 1")
    ws.plant("out/readme.txt")
    outcome = ws.cli(*segment_argv(ws, images, masks, "--output", "out", "--overwrite"))

    def check():
        names = sorted(p.name for p in ws.path("out").iterdir())
        if names != ["00000.png", "00001.png", "00002.png", "readme.txt"]:
            return f"output holds {names}"
        return None if read_labels(ws.path("out/00001.png")).shape == FRAME else "frame 1 was not rewritten"
    ws.expect_ok(outcome, check)


@cases("18.2", [("segment-output-is-the-input", ("clip/images",)),
                ("segment-output-inside-the-input", ("clip/images/pred",)),
                ("segment-output-is-the-masks", ("clip/masks",)),
                ("segment-output-inside-the-masks", ("clip/masks/pred",))])
def _(ws, output):
    images, masks = ws.clip()
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--output", output)), "outputs never go into the inputs")


@case("18.2")
def segment_overlay_is_the_input_video(ws):
    video = ws.video("clip.avi")
    ws.plant("masks/00000.png", png_bytes(first_mask(), palette=True))
    ws.expect_error(ws.cli(*segment_argv(ws, video, ws.path("masks"), "--overlay", video)),
                    "outputs never go into the inputs")


@case("18.2")
def segment_overlay_exists(ws):
    images, masks = ws.clip()
    ws.plant("overlay.avi", b"last week's video")
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--overlay", "overlay.avi")), "exists", "--overwrite")


@case("18.2")
def segment_overlay_overwrite(ws):
    images, masks = ws.clip()
    ws.path("overlay.avi").write_bytes(b"last week's video")
    outcome = ws.cli(*segment_argv(ws, images, masks, "--overlay", "overlay.avi", "--overwrite"))
    ws.expect_ok(outcome, lambda: None if count_frames(ws.path("overlay.avi")) == 3 else "overlay not rewritten")


@cases("18.2", [("segment-output-dot", (".", "clip")), ("segment-output-dotdot", ("..", "clip")),
                ("segment-output-home", ("HOME", "clip"))])
def _(ws, output, clip):
    images, masks = ws.clip(clip)
    ws.plant("home/.profile")
    output = str(ws.path("home")) if output == "HOME" else output
    outcome = ws.cli(*segment_argv(ws, images, masks, "--output", output), cwd=ws.path(clip),
                     env={"HOME": str(ws.path("home"))})
    ws.expect_error(outcome, "never writes into it")


@case("18.2")
def segment_output_is_a_file(ws):
    images, masks = ws.clip()
    ws.plant("out")
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--output", "out")), "not a folder")


@case("18.2")
def segment_into_new_nested_folders(ws):
    images, masks = ws.clip()
    outcome = ws.cli(*segment_argv(ws, images, masks, "--output", "results/run1/masks"))

    def check():
        folder = ws.path("results/run1/masks")
        if sorted(p.name for p in folder.iterdir()) != ["00000.png", "00001.png", "00002.png"]:
            return "not every frame written"
        return None if folder.stat().st_mode & 0o777 == 0o755 else f"mode {oct(folder.stat().st_mode & 0o777)}"
    ws.expect_ok(outcome, check)


@case("18.2")
def segment_failure_leaves_no_new_folders(ws):
    images, masks = ws.clip(frames=3)
    ws.plant("clip/masks/00002.png", png_bytes(np.zeros((20, 20), np.uint8), palette=True))
    outcome = ws.cli(*segment_argv(ws, images, masks, "--output", "results/run1/masks", "--overlay", "o.avi"))
    ws.expect_error(outcome, "00002.png")
    ws.expect(not ws.path("results").exists() and not ws.path("o.avi").exists(), "partial files left",
              "outputs or their folders left after a failure")


@cases("18.2", [("segment-overlay-in-a-missing-folder", ("nowhere/o.mp4", "not found")),
                ("segment-overlay-unknown-suffix", ("o.gif", "use one of"))])
def _(ws, overlay, message):
    images, masks = ws.clip()
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--overlay", overlay)), message)


# 18.4 -- label maps always with a 256-entry palette

@case("18.4")
def later_object_beyond_a_short_first_palette(ws):
    """The first mask's PNG has a 3-colour palette; a later mask brings object 5."""
    images, masks = ws.clip(frames=3)
    three = [0, 0, 0, 128, 0, 0, 0, 128, 0]
    ws.plant("clip/masks/00000.png", png_bytes(first_mask(), palette=True, colours=three))
    later = np.zeros(FRAME, np.uint8)
    later[2:10, 50:60] = 5
    ws.plant("clip/masks/00002.png", png_bytes(later, palette=True))
    outcome = ws.cli(*segment_argv(ws, images, masks, "--output", "out"))

    def check():
        written = read_labels(ws.path("out/00002.png"))
        with Image.open(ws.path("out/00002.png")) as im:
            colours = len(im.getpalette()) // 3
        if not (written == 5).any():
            return f"label 5 written as {sorted(set(np.unique(written).tolist()))}"
        return None if colours == 256 else f"{colours}-colour palette"
    ws.expect_ok(outcome, check)


@case("18.4")
def write_label_map_with_a_short_palette(ws):
    from vosrt import io

    labels = np.zeros(FRAME, np.uint8)
    labels[5:10, 5:10] = 200
    outcome = ws.api(lambda: io.write_label_map(ws.path("m.png"), labels, [0, 0, 0, 255, 0, 0]))
    ws.expect_ok(outcome, lambda: None if (read_labels(ws.path("m.png")) == labels).all() else "labels changed")


# 18.5 and 16 -- frames outside the documented dtypes and ranges; nothing poisons later frames

_BAD_FRAMES = {
    "nan": lambda f: np.where(np.arange(f.size).reshape(f.shape) == 7, np.nan, f / 255).astype(np.float32),
    "inf": lambda f: np.where(np.arange(f.size).reshape(f.shape) == 7, np.inf, f / 255).astype(np.float32),
    "minus-inf": lambda f: np.where(np.arange(f.size).reshape(f.shape) == 7, -np.inf, f / 255),
    "uint16": lambda f: f.astype(np.uint16) * 257,
    "int64": lambda f: f.astype(np.int64),
    "int8": lambda f: (f // 2).astype(np.int8),
    "bool": lambda f: f > 128,
    "float-0-255": lambda f: f.astype(np.float32),
    "float-minus1-1": lambda f: (f / 127.5 - 1).astype(np.float32),
    "grey-2d": lambda f: f[..., 0],
    "rgba": lambda f: np.concatenate([f, f[..., :1]], -1),
    "list": lambda f: f.tolist(),
}
_ERRORS = {"nan": "NaN", "inf": "infinite", "minus-inf": "infinite", "uint16": "uint16", "int64": "int64",
           "int8": "int8", "bool": "bool", "float-0-255": "divide by 255", "float-minus1-1": "outside [0, 1]",
           "grey-2d": "HxWx3", "rgba": "HxWx3", "list": "numpy array"}


def _session(ws, model: str, **options):
    import vosrt

    return vosrt.load(model, ws.weights(model), **options)


@cases("18.5", [(f"{model}-frame-{kind}", (model, kind)) for model in ("cutie-small", "jointformer")
                for kind in _BAD_FRAMES])
def _(ws, model, kind):
    """A bad frame mid-video is refused, and the frames after it come out as if it never came."""
    frames = [frame_image(i) for i in range(3)]
    clean = _session(ws, model, top_k=8)
    expected = [clean.step(frames[0], first_mask()), clean.step(frames[1]), clean.step(frames[2])]
    session = _session(ws, model, top_k=8)
    session.step(frames[0], first_mask())
    ws.expect_error(ws.api(lambda: session.step(_BAD_FRAMES[kind](frames[1]))), _ERRORS[kind])
    after = [ws.api(lambda: session.step(frames[1])), ws.api(lambda: session.step(frames[2]))]
    ws.expect(all(o.code == 0 for o in after), "other", "the session refused good frames after a bad one")
    if all(o.code == 0 for o in after):
        worst = max(float(np.abs(o.value - e).max()) for o, e in zip(after, expected[1:]))
        ws.expect(np.isfinite(worst) and worst < 1e-5, "silent wrong output",
                  f"frames after the bad one differ by {worst:.3g} (poisoned)")


@cases("18.5", [("float64-frames-equal-uint8", (np.float64,)), ("float16-frames-close-to-uint8", (np.float16,))])
def _(ws, dtype):
    frames = [frame_image(i) for i in range(2)]
    reference = _session(ws, "cutie-small")
    expected = [reference.step(frames[0], first_mask()), reference.step(frames[1])]
    session = _session(ws, "cutie-small")
    outcomes = [ws.api(lambda: session.step((frames[0] / 255).astype(dtype), first_mask())),
                ws.api(lambda: session.step((frames[1] / 255).astype(dtype)))]
    tolerance = 1e-5 if dtype == np.float64 else 5e-2
    for outcome, exp in zip(outcomes, expected):
        ws.expect_ok(outcome, lambda o=outcome, e=exp: None if np.abs(o.value - e).max() < tolerance else
                     f"differs from uint8 input by {np.abs(o.value - e).max():.3g}")


@case("18.5")
def sixteen_bit_png_frames(ws):
    images, masks = ws.clip(frames=2)
    for i in range(2):
        grey = (frame_image(i)[..., 0].astype(np.uint16) * 257)
        path = ws.path(f"clip/images/{i:05d}.png")
        Image.fromarray(grey).save(path)
        ws.planted[path] = path.read_bytes()
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--output", "out")), "8-bit")


# 18.6 -- downloads

class _Server:
    """A loopback HTTP server: ``serve(body, length=None, stall=False)`` -> URL."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int | None, bool]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- the http.server name
                body, length, stall = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if stall:
                    time.sleep(30)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, name: str, body: bytes, length: int | None = None, stall: bool = False) -> str:
        self.routes[f"/{name}"] = (body, length, stall)
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def _registry_url(ws, model: str, url: str) -> Iterator[Path]:
    """``model``'s default checkpoint downloaded from ``url`` into the workspace's cache."""
    from vosrt.runtime import registry

    spec = registry.MODELS[model]
    checkpoint = dataclasses.replace(spec.default_checkpoint, url=url, md5=None)
    registry.MODELS[model] = dataclasses.replace(spec, checkpoints=(checkpoint, *spec.checkpoints[1:]))
    try:
        with _environment({"VOSRT_CACHE": str(ws.path("cache"))}):
            yield ws.path("cache") / f"{checkpoint.name}.pth"
    finally:
        registry.MODELS[model] = spec


def _download(ws, body: bytes, length: int | None = None, stall: bool = False):
    """(the first and the second attempt to load cutie-small's default checkpoint, cache path)."""
    from vosrt.api import build_network

    server = _Server()
    try:
        with _registry_url(ws, "cutie-small", server.serve("w.pth", body, length, stall)) as cached:
            first = ws.api(lambda: build_network("cutie-small"))
            second = ws.api(lambda: build_network("cutie-small"))
    finally:
        server.close()
    return first, second, cached


@case("18.6")
def download_cut_short(ws):
    whole = ws.weights("cutie-small").read_bytes()
    first, second, cached = _download(ws, whole[:len(whole) // 2], length=len(whole))
    ws.expect_error(first, "cutie-small-mega")
    ws.expect_error(second, "cutie-small-mega")
    ws.expect(not cached.exists(), "silent wrong output", "a partial download was cached")


@cases("18.6", [("download-is-an-html-page", (b"<html>rate limited</html>",)),
                ("download-is-another-models-checkpoint", ("cutie-base",))])
def _(ws, body):
    body = ws.weights(body).read_bytes() if isinstance(body, str) else body
    first, _, cached = _download(ws, body)
    ws.expect_error(first, "cutie-small-mega")
    ws.expect(not cached.exists(), "silent wrong output", "a wrong download was cached")


@case("18.6")
def download_whole(ws):
    first, second, cached = _download(ws, ws.weights("cutie-small").read_bytes())
    ws.expect_ok(first)
    ws.expect_ok(second, lambda: None if cached.read_bytes() == ws.weights("cutie-small").read_bytes() else
                 "the cached file differs")


@case("18.6")
def download_interrupted(ws):
    """Ctrl-C while the body is still coming."""
    from vosrt.api import build_network

    whole = ws.weights("cutie-small").read_bytes()
    server = _Server()
    try:
        with _registry_url(ws, "cutie-small", server.serve("w.pth", whole[:1 << 20], len(whole), stall=True)):
            previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
            timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT))
            timer.start()
            try:
                outcome = ws.api(lambda: build_network("cutie-small"))
            finally:
                timer.cancel()
                signal.signal(signal.SIGINT, previous)
    finally:
        server.close()
    ws.expect("KeyboardInterrupt" in (outcome.escaped or ""), "other", f"not interrupted: {outcome}")


# 18.7 -- success reported only for what was written whole

@case("18.7", slow=True)
def overlay_on_a_full_disk(ws):
    images, masks = ws.clip(frames=3, size=(96, 128))
    outcome = ws.subprocess_cli(*segment_argv(ws, images, masks, "--overlay", "o.avi"), limit_bytes=6000)
    ws.expect_error(outcome, "overlay")
    ws.expect(not ws.path("o.avi").exists(), "silent wrong output", "an overlay was left in place")


@case("18.7", slow=True)
def label_maps_on_a_full_disk(ws):
    images, masks = ws.clip(frames=3, size=(96, 128))
    outcome = ws.subprocess_cli(*segment_argv(ws, images, masks, "--output", "out"), limit_bytes=300)
    ws.expect_error(outcome)
    ws.expect(not ws.path("out").exists(), "silent wrong output", "label maps were left in place")


@case("18.7")
def truncated_avi(ws):
    video = ws.video("clip.avi", frames=40)
    data = video.read_bytes()
    video.write_bytes(data[:len(data) // 2])
    ws.planted[video] = video.read_bytes()
    ws.plant("masks/00000.png", png_bytes(first_mask(), palette=True))
    outcome = ws.cli(*segment_argv(ws, video, ws.path("masks"), "--output", "out"))
    ws.expect_ok(outcome, lambda: None if "truncated" in outcome.warnings else "no warning that the video is cut short")


# 18.8 -- temporary files: signals and planted links

def _hidden_staging(ws) -> Callable[[], bool]:
    """Whether a run has begun writing: a hidden staging file or folder (not a claim) is there."""
    return lambda: any(p.name.startswith(".") and ".partial" in p.name for p in ws.root.rglob("*")
                       if p not in ws.planted)


@cases("18.8", [("sigterm-during-segment", (signal.SIGTERM,)), ("sigint-during-segment", (signal.SIGINT,))],
       slow=True)
def _(ws, signum):
    images, masks = ws.clip(frames=120, size=(96, 128))  # long enough that the signal lands mid-run on a busy machine
    outcome = ws.subprocess_cli(*segment_argv(ws, images, masks, "--output", "out", "--overlay", "o.mp4"),
                                send=signum, when=lambda: ws.path("o.mp4").exists() or _hidden_staging(ws)())
    ws.expect(outcome.code in (130, 143), "other", f"exit status {outcome.code}: {outcome.error[-200:]!r}")
    ws.expect(not ws.path("out").exists() and not ws.path("o.mp4").exists(), "partial files left",
              "outputs of an interrupted run")


@cases("18.8", [("sigterm-during-export", (signal.SIGTERM,)), ("sigint-during-export", (signal.SIGINT,))],
       slow=True)
def _(ws, signum):
    outcome = ws.subprocess_cli(*export_argv(ws, "exported"), send=signum, when=_hidden_staging(ws))
    ws.expect(outcome.code in (130, 143), "other", f"exit status {outcome.code}: {outcome.error[-200:]!r}")
    ws.expect(not ws.path("exported").exists(), "partial files left", "an interrupted export left its folder")


@case("18.8")
def eval_json_through_a_planted_link(ws):
    from vosrt import io

    ws.plant("victim.txt")
    for side in ("a", "b"):
        ws.path(side).mkdir()
        io.write_label_map(ws.path(f"{side}/00000.png"), first_mask())
    ws.plant_link(".out.json.partial", ws.path("victim.txt"))
    ws.expect_ok(ws.cli("eval", "--compare", "a", "b", "--json", "out.json"),
                 lambda: None if json.loads(ws.path("out.json").read_text())["frames"] == 1 else "wrong report")


@case("18.8")
def overlay_through_a_planted_link(ws):
    images, masks = ws.clip()
    ws.plant("victim.txt")
    ws.plant_link(".o.partial.avi", ws.path("victim.txt"))
    ws.expect_ok(ws.cli(*segment_argv(ws, images, masks, "--overlay", "o.avi")))


@case("18.8")
def eval_json_in_a_missing_folder(ws):
    from vosrt import io

    for side in ("a", "b"):
        ws.path(side).mkdir()
        io.write_label_map(ws.path(f"{side}/00000.png"), first_mask())
    ws.expect_error(ws.cli("eval", "--compare", "a", "b", "--json", "nowhere/out.json"), "nowhere")


# 18.9 -- a frame whose readout cannot fit is refused up front

@case("18.9", slow=True)
def huge_frame_without_max_internal_size(ws):
    code = ("import numpy as np, vosrt, sys\n"
            f"s = vosrt.load('cutie-small', {str(ws.weights('cutie-small'))!r})\n"
            "image = np.zeros((4000, 6000, 3), np.uint8); mask = np.zeros((4000, 6000), np.uint8); mask[:9, :9] = 1\n"
            "try:\n    s.step(image, mask)\nexcept ValueError as err:\n    print(err); sys.exit(2)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=env,
                              preexec_fn=lambda: __import__("resource").setrlimit(
                                  __import__("resource").RLIMIT_AS, (12 << 30, 12 << 30)))
        outcome = Outcome(done.returncode, error=done.stdout.strip() or done.stderr.strip()[-300:])
    except subprocess.TimeoutExpired:
        outcome = Outcome(1, escaped="still running after 90 s")
    ws.expect_error(outcome, "max_internal_size")


# 18.10 -- DAVIS void

@case("18.10")
def eval_ignores_a_void_border(ws):
    from vosrt import io

    truth = np.zeros((60, 80), np.uint8)
    truth[10:30, 10:40] = 1
    truth[35:55, 45:75] = 2
    pred = truth.copy()
    truth[:3, :], truth[-3:, :], truth[:, :3], truth[:, -3:] = 255, 255, 255, 255
    truth[28:32, 8:42] = np.where(truth[28:32, 8:42] == 1, 255, truth[28:32, 8:42])  # void on an object edge
    for folder, labels in (("gt", truth), ("pred", pred)):
        ws.path(folder).mkdir()
        for i in range(4):
            io.write_label_map(ws.path(f"{folder}/{i:05d}.png"), labels)
    outcome = ws.cli("eval", "--pred", "pred", "--gt", "gt", "--json", "jf.json")
    ws.expect_ok(outcome, lambda: None if json.loads(ws.path("jf.json").read_text())["J&F"] == 100 else
                 f"J&F {json.loads(ws.path('jf.json').read_text())['J&F']:.1f}, not 100")


# 16 -- masks a few pixels off the frame size, aligned as the official code aligns them

@cases("16.align", [("mask-1px-narrower", ((44, 69), None)), ("mask-2px-shorter-and-narrower", ((42, 68), None)),
                    ("mask-3px-wider-and-2px-taller", ((46, 73), None)),
                    ("mask-crossing-a-multiple-of-16", ((44, 64), "same multiple of 16")),
                    ("mask-much-smaller", ((20, 20), "same multiple of 16"))])
def _(ws, size, error):
    """The session with a mask of ``size`` on a 44x70 frame (network size 48x80), against the same
    session fed the mask padded by hand as the official ``pad_divide_by`` pads it."""
    frame_size = (44, 70)
    frames = [frame_image(i, frame_size) for i in range(3)]
    mask = np.zeros(size, np.uint8)
    mask[10:30, 8:40] = 1
    mask[:, -1] = 2
    mask[-1, :] = 3
    session = _session(ws, "cutie-small")
    first = ws.api(lambda: session.step(frames[0], mask))
    if error is not None:
        ws.expect_error(first, error)
        return
    by_hand = None if size[1] > frame_size[1] else official_alignment(mask, frame_size)
    # (the official code keeps a wider mask's edge in the padding: it has no frame-size twin)
    reference = _session(ws, "cutie-small")
    expected = [reference.step(frames[0], by_hand)] if by_hand is not None else []
    rest = [ws.api(lambda i=i: session.step(frames[i])) for i in (1, 2)]
    expected += [reference.step(frames[i]) for i in (1, 2)] if by_hand is not None else []
    ws.expect_ok(first, lambda: None if "aligned" in first.warnings else "no warning that the mask was aligned")
    if expected and all(o.code == 0 for o in (first, *rest)):
        worst = max(float(np.abs(o.value - e).max()) for o, e in zip([first, *rest], expected))
        ws.expect(worst == 0, "silent wrong output", f"differs from the official alignment by {worst:.3g}")


@case("16.align")
def segment_judo_with_its_853px_mask(ws):
    if not DAVIS.is_dir():
        ws.expect(False, "other", f"{DAVIS} not found")
        return
    outcome = ws.cli("segment", "cutie-small", "--weights", ws.weights("cutie-small"), "--input",
                     DAVIS / "images" / "judo", "--masks", DAVIS / "masks" / "judo", "--output", "out",
                     "--max-internal-size", "64", "--max-frames", "6")
    ws.expect_ok(outcome, lambda: None if "aligned" in outcome.warnings and
                 len(list(ws.path("out").glob("*.png"))) == 6 else "no warning, or frames missing")


@case("16.align")
def eval_judo_ground_truth_853px(ws):
    if not DAVIS.is_dir():
        ws.expect(False, "other", f"{DAVIS} not found")
        return
    from vosrt import io

    ws.path("pred").mkdir()
    for path in sorted((DAVIS / "masks" / "judo").glob("*.png")):
        labels, palette = io.read_label_map(path)
        io.write_label_map(ws.path("pred") / path.name, official_alignment(labels, (480, 854)), palette)
    outcome = ws.cli("eval", "--pred", "pred", "--gt", DAVIS / "masks" / "judo", "--all-frames", "--json", "jf.json")
    ws.expect_ok(outcome, lambda: None if json.loads(ws.path("jf.json").read_text())["J&F"] == 100 else "J&F not 100")


# 16 -- every artifact validated before use

def _break_export(export: Path, fault: str) -> None:
    manifest_path = export / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if fault == "truncated-onnx":
        data = (export / "mask_decoder.onnx").read_bytes()
        (export / "mask_decoder.onnx").write_bytes(data[:len(data) // 3])
    elif fault == "empty-onnx":
        (export / "memory_usage.onnx").write_bytes(b"")
    elif fault == "swapped-onnx":
        shutil.copy(export / "memory_usage.onnx", export / "mask_decoder.onnx")
    elif fault == "missing-onnx":
        (export / "image_encoder.onnx").unlink()
    elif fault == "manifest-not-json":
        manifest_path.write_text("{ not json")
    elif fault == "manifest-a-list":
        manifest_path.write_text("[]")
    elif fault == "manifest-without-architecture":
        del manifest["architecture"]
        manifest_path.write_text(json.dumps(manifest))
    elif fault == "graph-without-file":
        del manifest["graphs"]["mask_decoder"]["file"]
        manifest_path.write_text(json.dumps(manifest))
    elif fault == "graph-without-inputs":
        del manifest["graphs"]["mask_decoder"]["inputs"]
        manifest_path.write_text(json.dumps(manifest))
    elif fault == "manifest-binary":
        manifest_path.write_bytes(b"\xff\xfe\x00garbage")


_FAULTS = ("truncated-onnx", "empty-onnx", "swapped-onnx", "missing-onnx", "manifest-not-json", "manifest-a-list",
           "manifest-without-architecture", "graph-without-file", "graph-without-inputs", "manifest-binary")
_FAULT_WORDS = {"truncated-onnx": "sha256", "empty-onnx": "sha256", "swapped-onnx": "sha256",
                "missing-onnx": "image_encoder.onnx", "manifest-not-json": "not valid JSON",
                "manifest-a-list": "JSON object", "manifest-without-architecture": "architecture",
                "graph-without-file": "file", "graph-without-inputs": "inputs", "manifest-binary": "manifest.json"}


def _command(ws, command: str, export: Path, *extra: str) -> list:
    images, masks = (ws.path("clip/images"), ws.path("clip/masks"))
    return {"segment": lambda: segment_argv(ws, images, masks, "--export-dir", export, "--max-mem-frames", "3",
                                            "--output", "out", *extra),
            "inspect": lambda: ["inspect", export, *extra],
            "verify": lambda: ["verify", export, "--weights", ws.weights("cutie-small"), *extra],
            "from-onnx": lambda: ["export-engine", "--from-onnx", export, "--trtexec", *extra]}[command]()


@cases("16.artifacts", [(f"{command}-{fault}", (command, fault)) for command in ("segment", "inspect", "verify",
                                                                                "from-onnx") for fault in _FAULTS])
def _(ws, command, fault):
    ws.clip()
    export = ws.export()
    _break_export(export, fault)
    ws.expect_error(ws.cli(*_command(ws, command, export)), _FAULT_WORDS[fault])


@cases("16.artifacts", [(f"{command}-no-check-files-{fault}", (command, fault))
                        for command in ("segment", "inspect") for fault in ("truncated-onnx", "empty-onnx")])
def _(ws, command, fault):
    """Without the checksum check a damaged graph still ends in one line with the next step."""
    ws.clip()
    export = ws.export()
    _break_export(export, fault)
    outcome = ws.cli(*_command(ws, command, export, "--no-check-files"))
    if command == "inspect":  # inspect reads the manifest only: it lists the graphs as recorded
        ws.expect_ok(outcome)
    else:
        ws.expect_error(outcome, "export again")


@case("16.artifacts")
def segment_no_check_files_with_an_edited_graph(ws):
    """An edited graph (a re-saved copy, other bytes, same function) runs with --no-check-files."""
    import onnx

    images, masks = ws.clip()
    export = ws.export()
    model = onnx.load(str(export / "mask_decoder.onnx"))
    model.doc_string = "edited on purpose"
    onnx.save(model, str(export / "mask_decoder.onnx"))
    ws.expect_error(ws.cli(*_command(ws, "segment", export)), "sha256", "--no-check-files")
    ws.expect_ok(ws.cli(*_command(ws, "segment", export, "--no-check-files")))


@cases("16.artifacts", [(f"export-opset-{opset}", (opset,)) for opset in ("5", "13", "99")])
def _(ws, opset):
    ws.expect_error(ws.cli(*export_argv(ws, "exported", "--opset", opset)), "opset")
    ws.expect(not ws.path("exported").exists(), "partial files left", "an export folder after a refused opset")


@cases("16.artifacts", [("eval-rgb-prediction", ("pred",)), ("eval-rgb-ground-truth", ("gt",))])
def _(ws, side):
    from vosrt import io

    for folder in ("pred", "gt"):
        ws.path(folder).mkdir()
        for i in range(3):
            io.write_label_map(ws.path(f"{folder}/{i:05d}.png"), first_mask())
    Image.fromarray(frame_image(1)).save(ws.path(f"{side}/00001.png"))
    ws.expect_error(ws.cli("eval", "--pred", "pred", "--gt", "gt"), "RGB")


@cases("16.artifacts", [("eval-prediction-missing", ("missing", "no prediction")),
                        ("eval-prediction-of-another-size", ("size", "but the ground truth is"))])
def _(ws, fault, message):
    from vosrt import io

    for folder in ("pred", "gt"):
        ws.path(folder).mkdir()
        for i in range(3):
            io.write_label_map(ws.path(f"{folder}/{i:05d}.png"), first_mask())
    if fault == "missing":
        ws.path("pred/00002.png").unlink()
    else:
        io.write_label_map(ws.path("pred/00002.png"), np.zeros((20, 20), np.uint8))
    ws.expect_error(ws.cli("eval", "--pred", "pred", "--gt", "gt"), message)


# 16 -- a newcomer's next steps

@case("16.newcomer", slow=True)
def export_says_what_to_run_next(ws):
    ws.clip()
    outcome = ws.cli(*export_argv(ws, "exported"))
    ws.expect_ok(outcome, lambda: None if "vosrt segment cutie-small --export-dir exported" in outcome.out else
                 "no next step printed")


@case("16.newcomer")
def export_dir_alone_picks_the_backend(ws):
    """The export's graphs run (onnxruntime): no checkpoint is needed, so an absent --weights is no matter."""
    images, masks = ws.clip()
    export = ws.export()
    outcome = ws.cli("segment", "cutie-small", "--weights", "absent.pth", "--input", images, "--masks", masks,
                     "--export-dir", export, "--max-mem-frames", "3", "--output", "out", *fast())
    ws.expect_ok(outcome, lambda: None if len(list(ws.path("out").glob("*.png"))) == 3 else "frames missing")


@case("16.newcomer")
def overlay_is_h264_or_says_why_not(ws):
    import cv2

    images, masks = ws.clip()
    outcome = ws.cli(*segment_argv(ws, images, masks, "--overlay", "o.mp4"))

    def check():
        capture = cv2.VideoCapture(str(ws.path("o.mp4")))
        codec = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode(errors="replace")
        capture.release()
        if codec.lower() in ("avc1", "h264"):
            return None
        return None if "H.264" in outcome.warnings else f"{codec} video without a note"
    ws.expect_ok(outcome, check)


@case("16.newcomer")
def bench_plot_of_one_configuration(ws):
    outcome = ws.cli("bench", "cutie-small", "--backends", "torch", "--resolution", "48x64", "--frames", "1",
                     "--warmup", "1", "--plot", "bench.png")

    def check():
        with Image.open(ws.path("bench.png")) as image:
            return None if image.width < 1000 else f"{image.width} px wide: two one-dot panels, not one"
    ws.expect_ok(outcome, check)


# extra -- other bad inputs a user meets

@cases("extra", [("segment-max-frames-zero", (["--max-frames", "0"], "--max-frames")),
                 ("segment-fps-zero", (["--fps", "0", "--overlay", "o.avi"], "--fps")),
                 ("segment-fps-negative", (["--fps", "-5", "--overlay", "o.avi"], "--fps"))])
def _(ws, extra, message):
    images, masks = ws.clip()
    extra = extra if "--overlay" in extra else [*extra, "--output", "out"]
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, *extra)), message)


@cases("extra", [("mask-rgb-png", ("rgb", "palette or greyscale")),
                 ("mask-only-background", ("empty", "no object")),
                 ("mask-not-an-image", ("garbage", "cannot read mask")),
                 ("mask-missing-for-the-first-frame", ("absent", "no mask for the first frame"))])
def _(ws, fault, message):
    images, masks = ws.clip()
    path = ws.path("clip/masks/00000.png")
    path.unlink()
    del ws.planted[path]
    if fault == "rgb":
        Image.fromarray(frame_image(0)).save(path)
    elif fault == "empty":
        path.write_bytes(png_bytes(np.zeros(FRAME, np.uint8), palette=True))
    elif fault == "garbage":
        path.write_bytes(b"not a png")
    if path.exists():
        ws.planted[path] = path.read_bytes()
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--output", "out")), message)


@cases("extra", [("input-missing", ("missing", "input not found")), ("input-empty-folder", ("empty", "no images")),
                 ("input-corrupt-frame", ("corrupt", "cannot read image")),
                 ("input-not-a-video", ("notvideo", "cannot read video"))])
def _(ws, fault, message):
    images, masks = ws.clip()
    target = images
    if fault == "missing":
        target = ws.path("nowhere")
    elif fault == "empty":
        target = ws.path("empty")
        target.mkdir()
    elif fault == "corrupt":
        ws.plant("clip/images/00001.png", b"\x89PNG\r\n\x1a\n truncated")
    else:
        target = ws.plant("clip.mp4", b"not a video")
    ws.expect_error(ws.cli(*segment_argv(ws, target, masks, "--output", "out")), message)


# extra -- the session API on every model: bad masks, objects and calls are refused, and the
# session goes on as if the refused call had never come

API_MODELS = ("cutie-small", "cutie-base", "jointformer")

_BAD_MASKS = {  # first-frame mask -> what the error says
    "negative-labels": (lambda m: np.where(m > 0, -1, 0), "1..255"),
    "label-300": (lambda m: np.where(m > 0, 300, 0), "1..255"),
    "bool": (lambda m: m > 0, "integer label map"),
    "float": (lambda m: m.astype(np.float32), "integer label map"),
    "nan": (lambda m: np.full(m.shape, np.nan), "integer label map"),
    "rgb": (lambda m: np.stack([m] * 3, -1), "HxW"),
    "flat": (lambda m: m.reshape(-1), "HxW"),
    "list": (lambda m: m.tolist(), "integer label map"),
    "twice-the-frame": (lambda m: np.kron(m, np.ones((2, 2), m.dtype)), "but the frame is"),
    "only-background": (np.zeros_like, "no object"),
}

_BAD_FIRST_CALLS = {  # a refused first step -> what the error says
    **{f"mask-{kind}": (lambda s, make=make: s.step(frame_image(0), make(first_mask())), message)
       for kind, (make, message) in _BAD_MASKS.items()},
    "objects-out-of-range": (lambda s: s.step(frame_image(0), first_mask(), objects=[0, 300]), "1..255"),
    "objects-repeated": (lambda s: s.step(frame_image(0), first_mask(), objects=[1, 1]), "distinct"),
    "objects-missing-a-label": (lambda s: s.step(frame_image(0), first_mask(), objects=[1]), "not listed"),
    "objects-not-integers": (lambda s: s.step(frame_image(0), first_mask(), objects=["1", "2"]), "integer ids"),
    "objects-without-a-mask": (lambda s: s.step(frame_image(0), None, objects=[1, 2]), "no mask is given"),
    "first-frame-without-a-mask": (lambda s: s.step(frame_image(0)), "needs a mask"),
}

_BAD_LATER_CALLS = {  # a refused call after the first frame -> what the error says
    "remove-an-untracked-object": (lambda s: s.remove_objects([9]), "cannot remove objects [9]"),
    "remove-a-string": (lambda s: s.remove_objects("1"), "integer ids"),
    "frame-size-changes": (lambda s: s.step(frame_image(1, (64, 48))), "reset()"),
    "later-mask-of-another-size": (lambda s: s.step(frame_image(1), first_mask((24, 32))), "but the frame is"),
    "later-objects-without-a-mask": (lambda s: s.step(frame_image(1), None, objects=[1]), "no mask is given"),
}

_MASK_DTYPES = (np.uint8, np.uint16, np.int8, np.int32)


def _two_frames(session, mask: np.ndarray | None = None) -> list[np.ndarray]:
    return [session.step(frame_image(0), first_mask() if mask is None else mask), session.step(frame_image(1))]


def _largest_difference(got: list[np.ndarray], expected: list[np.ndarray], tolerance: float = 1e-6) -> str | None:
    worst = max(float(np.abs(g - e).max()) if g.shape == e.shape else np.inf for g, e in zip(got, expected))
    return None if worst <= tolerance else f"differs from a fresh session by {worst:.3g}"


@cases("extra", [(f"api-{model}-{kind}", (model, kind)) for model in API_MODELS for kind in _BAD_FIRST_CALLS])
def _(ws, model, kind):
    """A bad first call is refused; the good first frame after it starts the video as in a fresh session."""
    call, message = _BAD_FIRST_CALLS[kind]
    session = _session(ws, model, top_k=8)
    ws.expect_error(ws.api(lambda: call(session)), message)
    after = ws.api(lambda: _two_frames(session))
    ws.expect_ok(after, lambda: _largest_difference(after.value, _two_frames(_session(ws, model, top_k=8))))


@cases("extra", [(f"api-{model}-{kind}", (model, kind)) for model in API_MODELS for kind in _BAD_LATER_CALLS])
def _(ws, model, kind):
    """Refused mid-video: the next frame comes out as if the call had never been made."""
    call, message = _BAD_LATER_CALLS[kind]
    session = _session(ws, model, top_k=8)
    session.step(frame_image(0), first_mask())
    ws.expect_error(ws.api(lambda: call(session)), message)
    after = ws.api(lambda: [session.step(frame_image(1))])
    ws.expect_ok(after, lambda: _largest_difference(after.value, _two_frames(_session(ws, model, top_k=8))[1:]))


@cases("extra", [(f"api-{model}-mask-{dtype.__name__}", (model, dtype)) for model in API_MODELS
                 for dtype in _MASK_DTYPES])
def _(ws, model, dtype):
    """Documented: a mask of any integer dtype is a label map (the same result as int64)."""
    session = _session(ws, model, top_k=8)
    outcome = ws.api(lambda: _two_frames(session, first_mask().astype(dtype)))
    expected = _two_frames(_session(ws, model, top_k=8), first_mask().astype(np.int64))
    ws.expect_ok(outcome, lambda: _largest_difference(outcome.value, expected, tolerance=0.0))


# 17 and 18.5 -- a batch checks every stream's frame before any stream moves on

def _batch(ws, model: str):
    import vosrt

    return vosrt.load_batch(model, ws.weights(model), top_k=8)


def _batch_frames(batch, bad: dict | None = None) -> dict:
    """Frame 1 of streams "a" and "b" after their first frames (stream "b" mirrored)."""
    batch.step({"a": (frame_image(0), first_mask()), "b": (frame_image(0)[:, ::-1], first_mask()[:, ::-1])})
    return batch.step(bad) if bad else batch.step({"a": frame_image(1), "b": frame_image(1)[:, ::-1]})


@cases("17", [(f"batch-{model}-stream-frame-{kind}", (model, kind)) for model in ("cutie-small", "jointformer")
              for kind in _BAD_FRAMES])
def _(ws, model, kind):
    """One stream's bad frame is refused naming the stream; no stream moved on (the next good
    step gives what a batch that never saw the bad frame gives)."""
    batch = _batch(ws, model)
    refused = ws.api(lambda: _batch_frames(batch, {"a": frame_image(1),
                                                   "b": _BAD_FRAMES[kind](frame_image(1)[:, ::-1].copy())}))
    ws.expect_error(refused, "stream 'b'", _ERRORS[kind])
    after = ws.api(lambda: batch.step({"a": frame_image(1), "b": frame_image(1)[:, ::-1]}))
    expected = _batch_frames(_batch(ws, model))
    ws.expect_ok(after, lambda: _largest_difference([after.value["a"], after.value["b"]],
                                                    [expected["a"], expected["b"]]))


_BAD_BATCH_CALLS = {  # a refused batch call -> what the error says
    "last-names-a-stream-without-a-frame": (lambda b: b.step({"a": frame_image(1)}, last=["b"]), "without a frame"),
    "new-stream-without-a-mask": (lambda b: b.step({"a": frame_image(1), "c": frame_image(1)}), "stream 'c'"),
    "end-an-unknown-stream": (lambda b: b.end("c"), "no stream 'c'"),
    "remove-objects-of-an-unknown-stream": (lambda b: b.remove_objects("c", [1]), "no stream 'c'"),
}


@cases("17", [(f"batch-{model}-{kind}", (model, kind)) for model in ("cutie-small", "jointformer")
              for kind in _BAD_BATCH_CALLS])
def _(ws, model, kind):
    call, message = _BAD_BATCH_CALLS[kind]
    batch = _batch(ws, model)
    batch.step({"a": (frame_image(0), first_mask()), "b": (frame_image(0)[:, ::-1], first_mask()[:, ::-1])})
    ws.expect_error(ws.api(lambda: call(batch)), message)
    after = ws.api(lambda: batch.step({"a": frame_image(1), "b": frame_image(1)[:, ::-1]}))
    expected = _batch_frames(_batch(ws, model))
    ws.expect_ok(after, lambda: _largest_difference([after.value["a"], after.value["b"]],
                                                    [expected["a"], expected["b"]]))


@cases("extra", [("checkpoint-of-another-model", ("cutie-base", "does not fit")),
                 ("checkpoint-not-torch", ("garbage", "not a readable PyTorch checkpoint")),
                 ("checkpoint-missing", ("missing", "checkpoint not found"))])
def _(ws, fault, message):
    images, masks = ws.clip()
    weights = {"cutie-base": lambda: ws.weights("cutie-base"), "garbage": lambda: ws.plant("w.pth", b"junk"),
               "missing": lambda: ws.path("absent.pth")}[fault]()
    outcome = ws.cli("segment", "cutie-small", "--weights", weights, "--input", images, "--masks", masks,
                     "--output", "out")
    if fault == "cutie-base":  # the strict loader lists the keys that differ, on lines of their own
        outcome.error = outcome.error.splitlines()[0] if outcome.error else outcome.error
    ws.expect_error(outcome, message)


@case("extra")
def export_from_onnx_of_a_folder_that_is_not_an_export(ws):
    ws.plant("notes/readme.txt")
    ws.expect_error(ws.cli("export-engine", "--from-onnx", "notes"), "no manifest.json")


@case("extra")
def segment_tensorrt_without_a_gpu(ws):
    images, masks = ws.clip()
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--backend", "tensorrt", "--export-dir", "x",
                                         "--output", "out")), "NVIDIA GPU")


# 27.1 -- an output is claimed for the whole run: two runs, or two streams, never share one

def _until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while not condition() and process.poll() is None and time.monotonic() - start < timeout:
        time.sleep(0.05)


def _label_maps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


@cases("27.1", [("two-runs-same-output", ("--output", "out")), ("two-runs-same-overlay", ("--overlay", "o.avi"))],
       slow=True)
def _(ws, flag, target):
    """A second run naming the output of a run still going is refused before it starts work; the
    first run's output is whole and its own."""
    images, masks = ws.clip("long", frames=60, size=(96, 128))
    other_images, other_masks = ws.clip("short", frames=2)
    first = ws.start_cli(*segment_argv(ws, images, masks, flag, target))
    _until(_hidden_staging(ws), first)
    second = ws.cli(*segment_argv(ws, other_images, other_masks, flag, target))
    outcome = ws.finish(first)
    ws.expect_error(second, "another vosrt run")

    def check():
        held = len(_label_maps(ws.path(target))) if flag == "--output" else count_frames(ws.path(target))
        return None if held == 60 else f"{target} holds {held} frames, not the 60 of the first run"
    ws.expect_ok(outcome, check)


@case("27.1", slow=True)
def output_filled_by_something_else_during_the_run(ws):
    """A file that appears in --output while the run goes on is neither replaced nor mixed with
    the run's label maps: the run fails at its final move and says why."""
    images, masks = ws.clip(frames=60, size=(96, 128))
    run = ws.start_cli(*segment_argv(ws, images, masks, "--output", "out"))
    _until(_hidden_staging(ws), run)
    ws.plant("out/00001.png", b"the user's own map, written meanwhile")
    outcome = ws.finish(run)
    ws.expect_error(outcome, "written by something else")


@cases("27.1", [("streams-share-an-output", (("out", "a.avi"), ("out", "b.avi"))),
                ("streams-share-an-overlay", (("pa", "o.avi"), ("pb", "o.avi"))),
                ("stream-overlay-inside-another-output", (("out", "a.avi"), ("pb", "out/o.avi")))])
def _(ws, first, second):
    images, masks = ws.clip("a")
    other_images, other_masks = ws.clip("b")
    outcome = ws.cli("segment", "cutie-small", "--weights", ws.weights("cutie-small"), *fast(),
                     "--input", images, "--masks", masks, "--output", first[0], "--overlay", first[1],
                     "--input", other_images, "--masks", other_masks, "--output", second[0], "--overlay", second[1])
    ws.expect_error(outcome, "same output")


@case("27.1")
def frames_whose_names_collide_without_the_extension(ws):
    images, masks = ws.clip()
    ws.plant("clip/images/00001.jpg", png_bytes(frame_image(5)))
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, "--output", "out")), "same name")


# 27.2 -- a run stopped before the end of a finite input never looks finished

def _mjpeg(ws, relative: str, frames: int, size: tuple[int, int] = FRAME,
           sizes: Callable[[int], tuple[int, int]] | None = None) -> Path:
    """A raw MJPEG stream (JPEG frames one after another): a file whose frame count OpenCV cannot read."""
    import cv2

    data = b"".join(cv2.imencode(".jpg", frame_image(i, sizes(i) if sizes else size)[..., ::-1].copy())[1].tobytes()
                    for i in range(frames))
    return ws.plant(relative, data)


@cases("27.2", [("sigterm-during-a-video-of-unknown-length", (signal.SIGTERM, 143)),
                ("sigint-during-a-video-of-unknown-length", (signal.SIGINT, 130))], slow=True)
def _(ws, signum, status):
    video = _mjpeg(ws, "clip.mjpeg", 60, (96, 128))
    ws.plant("masks/00000.png", png_bytes(first_mask((96, 128)), palette=True))
    outcome = ws.subprocess_cli(*segment_argv(ws, video, ws.path("masks"), "--output", "out"), send=signum,
                                when=_hidden_staging(ws))
    ws.expect(outcome.code == status, "silent wrong output" if outcome.code == 0 else "other",
              f"exit status {outcome.code}, not {status}: {(outcome.error + outcome.out)[-200:]!r}")
    ws.expect("stopped after" in outcome.error, "other", f"does not say how far it got: {outcome.error[-200:]!r}")
    ws.expect(not ws.path("out").exists(), "partial files left", "outputs of a stopped run")


@case("27.2")
def video_of_unknown_length_runs_to_its_end(ws):
    video = _mjpeg(ws, "clip.mjpeg", 4)
    ws.plant("masks/00000.png", png_bytes(first_mask(), palette=True))
    ws.expect_ok(ws.cli(*segment_argv(ws, video, ws.path("masks"), "--output", "out")),
                 lambda: None if len(_label_maps(ws.path("out"))) == 4 else f"{_label_maps(ws.path('out'))}")


# 27.3 -- non-finite weights: refused at load, and a step's output checked

def _edited_weights(ws, key: str, edit: Callable) -> Path:
    """The seeded cutie-small weights with ``edit(tensor)`` (in place) applied to the tensor ``key``."""
    import torch

    state = torch.load(ws.weights("cutie-small"), map_location="cpu", weights_only=True)
    state[key] = state[key].clone()
    edit(state[key])
    path = ws.path("edited.pth")
    torch.save(state, path)
    return path


@cases("27.3", [("checkpoint-with-nan-weights", ("pix_feat_proj.weight", lambda t: t.fill_(float("nan")))),
                ("checkpoint-with-one-inf-in-key-proj",
                 ("key_proj.key_proj.weight", lambda t: t.view(-1).__setitem__(0, float("inf"))))])
def _(ws, key, edit):
    images, masks = ws.clip()
    outcome = ws.cli("segment", "cutie-small", "--weights", _edited_weights(ws, key, edit), "--input", images,
                     "--masks", masks, *fast(), "--output", "out")
    ws.expect_error(outcome, "non-finite", key)


@cases("27.3", [(f"api-{model}-step-with-nan-weights", (model,)) for model in ("cutie-small", "jointformer")])
def _(ws, model):
    """Weights that turn NaN after the load (the checkpoint check cannot see them): the step says so."""
    import copy

    import torch

    from vosrt.api import build_network
    from vosrt.runtime.backends.torch import TorchBackend
    from vosrt.runtime.registry import model_spec

    spec = model_spec(model)
    network = copy.deepcopy(build_network(model, ws.weights(model)))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.fill_(float("nan"))
    config = spec.config_type()
    session = spec.family.new_session(TorchBackend(spec.family, network, config.export_settings(), "cpu"), config)
    session.step(frame_image(0), first_mask())  # the first frame's output is its mask
    ws.expect_error(ws.api(lambda: session.step(frame_image(1))), "NaN or infinite")


# 27.4 -- an export is bound to the checkpoint it came from, and its manifest to its graphs

def _other_weights(ws) -> Path:
    return _edited_weights(ws, "pix_feat_proj.weight", lambda t: t.mul_(1.01))


@case("27.4")
def export_dir_of_other_weights(ws):
    ws.clip()
    export = ws.export()
    argv = _command(ws, "segment", export)
    argv[argv.index("--weights") + 1] = _other_weights(ws)
    ws.expect_error(ws.cli(*argv), "another checkpoint")


@case("27.4", slow=True)
def cached_export_of_other_weights(ws):
    """An export of other weights put where the cache keeps these weights' export is not used: the
    export is written again."""
    from vosrt.runtime import artifacts

    images, masks = ws.clip()
    weights = _other_weights(ws)
    cached = ws.path(f"cache/onnx/cutie-small-{artifacts.sha256(weights)[:16]}-30-fp32")
    cached.parent.mkdir(parents=True)
    shutil.copytree(ws.shared_export(), cached)
    outcome = ws.cli("segment", "cutie-small", "--weights", weights, "--input", images, "--masks", masks, *fast(),
                     "--backend", "onnxruntime", "--max-mem-frames", "3", "--output", "out",
                     env={"VOSRT_CACHE": str(ws.path("cache"))})
    recorded = json.loads((cached / "manifest.json").read_text())["checkpoint"]["sha256"]
    ws.expect_ok(outcome, lambda: None if recorded == artifacts.sha256(weights) else
                 "the cached export of other weights was used")


_MANIFEST_EDITS = {  # edit -> (what the command adds, what the error says)
    "model-cutie-base": (lambda m: m.update(model="cutie-base"), "another model"),
    "top-k-10": (lambda m: m["settings"].update(top_k=10), "top_k 10"),
    "precision-fp16": (lambda m: m.update(precision="fp16"), "precision"),
    "swapped-entries": (lambda m: m["graphs"].update(image_encoder=m["graphs"]["mask_decoder"],
                                                     mask_decoder=m["graphs"]["image_encoder"]), "another graph"),
}


@cases("27.4", [(f"edited-manifest-{edit}", (edit,)) for edit in _MANIFEST_EDITS])
def _(ws, edit):
    ws.clip()
    export = ws.export()
    change, message = _MANIFEST_EDITS[edit]
    manifest = json.loads((export / "manifest.json").read_text())
    change(manifest)
    (export / "manifest.json").write_text(json.dumps(manifest))
    argv = _command(ws, "segment", export, *{"top-k-10": ["--top-k", "10"], "precision-fp16": ["--fp16"]}.get(edit, []))
    if edit == "model-cutie-base":
        argv[1:4] = ["cutie-base", "--weights", ws.weights("cutie-base")]
    ws.expect_error(ws.cli(*argv), message)


# 27.5 -- every input normalised in one place: names, sizes, numbers

@case("27.5")
def later_mask_with_an_upper_case_extension(ws):
    images, masks = ws.clip(frames=4)
    later = first_mask()
    later[:8, :8] = 3
    ws.plant("clip/masks/00002.PNG", png_bytes(later, palette=True))
    outcome = ws.cli(*segment_argv(ws, images, masks, "--output", "out"))
    ws.expect_ok(outcome, lambda: None if (read_labels(ws.path("out/00002.png")) == 3).any() else
                 "object 3 of 00002.PNG never appears")


@case("27.5")
def video_whose_frame_size_changes_within_the_file(ws):
    """OpenCV stretches every frame of an MJPEG video to the first frame's size: refused instead."""
    video = _mjpeg(ws, "clip.mjpeg", 4, sizes=lambda i: FRAME if i < 2 else (32, 80))
    ws.plant("masks/00000.png", png_bytes(first_mask(), palette=True))
    ws.expect_error(ws.cli(*segment_argv(ws, video, ws.path("masks"), "--output", "out")), "changes its frame size")


@case("27.5")
def eval_compare_with_upper_case_extensions(ws):
    from vosrt import io

    for side, name in (("a", "00000.png"), ("a", "00001.png"), ("b", "00000.PNG"), ("b", "00001.png")):
        ws.path(side).mkdir(exist_ok=True)
        io.write_label_map(ws.path(f"{side}/{name}"), first_mask())
    outcome = ws.cli("eval", "--compare", "a", "b", "--json", "agreement.json")
    ws.expect_ok(outcome, lambda: None if json.loads(ws.path("agreement.json").read_text())["frames"] == 2 else
                 "00000.PNG was not compared")


@cases("27.5", [(f"fps-{value}", (value,)) for value in ("inf", "nan", "-1", "1e12")], slow=True)
def _(ws, value):
    images, masks = ws.clip()
    ws.expect_error(ws.subprocess_cli(*segment_argv(ws, images, masks, "--overlay", "o.avi", "--fps", value),
                                      timeout=90), "--fps")


@cases("27.5", [(f"api-{model}-{h}x{w}-image", (model, (h, w))) for model in ("cutie-small", "jointformer")
                for h, w in ((0, 0), (0, 160), (160, 0))])
def _(ws, model, size):
    from vosrt.api import load

    session = load(model, ws.weights(model), **({"max_internal_size": 48} if model != "jointformer" else {}))
    empty = np.zeros(size, np.uint8)
    ws.expect_error(ws.api(lambda: session.step(np.zeros((*size, 3), np.uint8), empty, objects=[1])), "at least 1x1")


@case("27.5", slow=True)
def scoring_workers_do_not_inherit_the_sigterm_handler(ws):
    """A worker process forked under vosrt's SIGTERM handler (as vos-benchmark's pool is) ends
    quietly when its pool terminates it while it works."""
    code = ("import time\n"
            "from multiprocessing import Pool\n"
            "from vosrt.runtime.safe_write import sigterm_as_interrupt\n"
            "with sigterm_as_interrupt():\n"
            "    pool = Pool(2)\n"
            "    pool.map_async(time.sleep, [30, 30])\n"
            "    time.sleep(2)\n"
            "    pool.terminate()\n"
            "    pool.join()\n"
            "print('done')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ws.root)
    ws.expect(done.returncode == 0 and "done" in done.stdout, "other", f"exit {done.returncode}: {done.stderr[-300:]}")
    ws.expect("Traceback" not in done.stderr, "traceback", done.stderr.strip()[-300:])


@cases("27.5", [(f"overlay-of-{h}x{w}-frames", ((h, w),)) for h, w in ((47, 63), (1, 1), (1, 64), (64, 1), (2, 200))])
def _(ws, size):
    """Frames of any size, odd or thin, give an overlay of every frame at the nearest even size
    (mp4 codecs encode even sizes only), with a warning when it differs."""
    images, masks = ws.path("clip/images"), ws.path("clip/masks")
    for i in range(3):
        ws.plant(f"clip/images/{i:05d}.png", png_bytes(frame_image(i, size)))
    mask = np.zeros(size, np.uint8)
    mask[0, 0] = 1
    ws.plant("clip/masks/00000.png", png_bytes(mask, palette=True))
    outcome = ws.cli(*segment_argv(ws, images, masks, "--overlay", "o.mp4"))
    expected = (size[0] + size[0] % 2, size[1] + size[1] % 2)

    def check():
        if count_frames(ws.path("o.mp4")) != 3:
            return f"{count_frames(ws.path('o.mp4'))} frames in the overlay"
        if first_frame_size(ws.path("o.mp4")) != expected:
            return f"overlay frames of {first_frame_size(ws.path('o.mp4'))}, not {expected}"
        return None if expected == size or "even" in outcome.warnings else "no warning about the padded size"
    ws.expect_ok(outcome, check)


@cases("27.5", [("output-is-a-dangling-link", ("--output", "out")),
                ("overlay-is-a-dangling-link", ("--overlay", "o.avi"))])
def _(ws, flag, target):
    images, masks = ws.clip()
    ws.plant_link(target, ws.path("nowhere"))
    ws.expect_error(ws.cli(*segment_argv(ws, images, masks, flag, target)), "symbolic link to nothing")
    ws.expect(not ws.path("nowhere").exists(), "silent wrong output", "wrote through the dangling link")


@case("27.5", slow=True)
def output_name_not_utf8_under_a_strict_utf8_stdout(ws):
    images, masks = ws.clip()
    name = os.fsdecode(b"out-\xff")
    outcome = ws.subprocess_cli(*segment_argv(ws, images, masks, "--output", name),
                                env={"PYTHONIOENCODING": "utf-8:strict"})
    ws.expect_ok(outcome, lambda: None if len(_label_maps(ws.path(name))) == 3 else "label maps missing")


# 27.6 -- what a killed run left is removed by the next run that writes there

@case("27.6", slow=True)
def staging_left_by_sigkill_is_removed_by_the_next_run(ws):
    images, masks = ws.clip(frames=60, size=(96, 128))
    ws.subprocess_cli(*segment_argv(ws, images, masks, "--output", "out", "--overlay", "o.avi"),
                      send=signal.SIGKILL, when=_hidden_staging(ws))
    ws.expect(_hidden_staging(ws)(), "other", "the killed run left nothing to clean (killed too late?)")
    short_images, short_masks = ws.clip("short")
    ws.expect_ok(ws.cli(*segment_argv(ws, short_images, short_masks, "--output", "out", "--overlay", "o.avi")))


@case("27.6", slow=True)
def export_staging_left_by_sigkill_is_removed_by_the_next_export(ws):
    ws.subprocess_cli(*export_argv(ws, "exported"), send=signal.SIGKILL, when=_hidden_staging(ws))
    ws.expect(_hidden_staging(ws)(), "other", "the killed export left nothing to clean (killed too late?)")
    ws.expect_ok(ws.cli(*export_argv(ws, "exported")), lambda: _manifest_is_fresh(ws.path("exported")))


# -- running the table -----------------------------------------------------------------------

@dataclass
class Verdict:
    case: Case
    findings: list[tuple[str, str]]
    seconds: float

    @property
    def held(self) -> bool:
        return not self.findings


def run_case(item: Case, root: Path, weights: Callable[[str], Path], shared_export: Callable[[], Path]) -> Verdict:
    """Run one case in the empty folder ``root`` and audit it."""
    ws = Workspace(root, weights, shared_export)
    start = time.perf_counter()
    try:
        item.run(ws)
    except Exception as err:  # noqa: BLE001 -- a case that breaks is reported, not raised
        ws.findings.append(("traceback", f"the case itself raised {type(err).__name__}: {err}"))
    return Verdict(item, ws.audit(), time.perf_counter() - start)


@contextlib.contextmanager
def shared_networks() -> Iterator[None]:
    """Within the block, ``vosrt.api.build_network`` builds each (model, weights file) once and
    hands every later caller that network (inference leaves it unchanged): the cases load the same
    seeded weights many times. Downloads (``weights=None``) are not cached."""
    from vosrt import api

    original, built = api.build_network, {}

    def build(name, weights=None):
        if weights is None:
            return original(name, weights)
        key = (name, str(Path(weights).resolve()))
        if key not in built:
            built[key] = original(name, weights)
        return built[key]

    api.build_network = build
    try:
        yield
    finally:
        api.build_network = original


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    """Cases with at least one finding of each kind, and those that held."""
    result = {kind: sum(any(k == kind for k, _ in v.findings) for v in verdicts) for kind in KINDS}
    return {"cases": len(verdicts), "held": sum(v.held for v in verdicts), **result}
