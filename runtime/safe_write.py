"""Where vosrt writes, and how: the output rules of every command, in one place. No torch import.

- A command never writes into (or replaces) the current folder, its parent folders or the home
  folder (and its parents): :func:`check_not_protected`.
- An existing folder is replaced only when the caller says it may be (an export replaces only a
  folder whose manifest marks it as a vosrt export): :func:`replaced_folder`.
- Outputs never land in a command's inputs: :func:`check_outside`.
- Everything is written under a fresh name beside its target (``mkstemp`` / ``mkdtemp``: a name
  nobody could have planted a link under) and renamed into place only once complete and checked;
  a failure or an interruption removes it: :func:`staged_file`, :func:`staged_folder`.
- SIGTERM is handled as SIGINT (:func:`sigterm_as_interrupt`), so the clean-up above also runs
  when a job is terminated.
- An output is claimed for the whole run (:func:`claimed`): a hidden claim file beside it that
  another run sees, so two runs never write the same output; temporary names carry their owner
  (process id and host), so what a killed run left is removed by the next run that writes beside
  it (:func:`remove_stale`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

PARTIAL = ".partial"  # every temporary name ends with it (before the target's suffix)
CLAIM = ".vosrt-claim"  # a claim file is named ".<target name>.vosrt-claim", beside its target
STALE_SECONDS = 24 * 3600  # a temporary file whose owner cannot be checked is stale after a day


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread,
    so that what cleans up after Ctrl-C also cleans up after ``kill``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def terminate(signum, frame):
        if os.getpid() != owner:  # a forked worker (e.g. a multiprocessing pool's): die as by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_not_protected(path: str | Path, what: str) -> None:
    """ValueError when ``path`` is the current folder, one of its parents, or the home folder or
    one of its parents: no command writes into or replaces those."""
    resolved = Path(path).resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if resolved == cwd:
        why = "the current folder"
    elif resolved in cwd.parents:
        why = "a parent of the current folder"
    elif resolved == home:
        why = "your home folder"
    elif resolved in home.parents:
        why = "a parent of your home folder"
    else:
        return
    raise ValueError(f"{what} {path} is {why}: vosrt never writes into it; name a new folder")


def check_outside(path: str | Path, sources: Iterable[tuple[str, str | Path | None]], what: str) -> None:
    """ValueError when ``path`` is one of ``sources`` ((option, path) pairs, None skipped) or lies
    inside one of those that are folders."""
    resolved = Path(path).resolve()
    for option, source in sources:
        if source is None:
            continue
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents:
            where = "is" if resolved == source else "is inside"
            raise ValueError(f"{what} {path} {where} {option} {source}: outputs never go into the inputs; "
                             "name another folder")


def folder_mode() -> int:
    """Permissions of a new folder: what ``mkdir`` gives under the current umask (0755 under the
    usual 022), where ``mkdtemp`` gives 0700."""
    return 0o777 & ~_umask()


def file_mode() -> int:
    """Permissions of a new file under the current umask (0644 under 022; ``mkstemp`` gives 0600)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def temporary_name(target: Path) -> tuple[str, str]:
    """The (prefix, suffix) of temporary names beside ``target``: hidden, with the owner
    (:func:`owner`), marked partial, keeping its suffix (so writers that choose a format by the
    suffix choose the target's)."""
    return f".{target.stem}.{owner()}.", f"{PARTIAL}{target.suffix}"


def owner() -> str:
    """``PID@HOST`` of this process, as temporary names and claims record it."""
    return f"{os.getpid()}@{socket.gethostname().replace('.', '-') or 'localhost'}"


def owner_alive(tag: str) -> bool | None:
    """Whether the process ``tag`` (:func:`owner`) still runs; None when that cannot be known here
    (another host, or not an owner tag)."""
    pid, _, host = tag.partition("@")
    if not pid.isdigit() or host != owner().partition("@")[2]:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files and folders beside ``target`` (:func:`temporary_name`, and the
    ``.old`` folders of a swap) that a run killed before it could clean up left: those whose owner
    process no longer runs on this host, and those of another host older than
    :data:`STALE_SECONDS`. Names without an owner tag are left alone. Returns what it removed."""
    stem, removed = f".{target.stem}.", []
    try:
        siblings = [p for p in target.parent.iterdir() if p.name.startswith(stem)
                    and p.name.endswith((f"{PARTIAL}{target.suffix}", ".old"))]
    except OSError:
        return removed
    for path in siblings:
        tag = path.name[len(stem):].split(".", 1)[0]
        if "@" not in tag:  # not a name vosrt gave (a user's file, or one planted): left alone
            continue
        alive = owner_alive(tag)
        with contextlib.suppress(OSError):
            if alive is False or (alive is None and time.time() - path.lstat().st_mtime > STALE_SECONDS):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def claimed(target: str | Path, what: str) -> Iterator[None]:
    """Claim ``target`` (an output file or folder) for the block: a claim file beside it
    (``.NAME.vosrt-claim``, made with O_EXCL, holding :func:`owner`) that every other run
    claiming the same output sees, so it is refused before it starts work (FileExistsError). A
    claim whose owner no longer runs on this host is stale and taken over. The folders above
    ``target`` are made as needed; those made here are removed again when they stay empty."""
    target = Path(target)
    made = [parent for parent in reversed(target.parents) if not parent.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    claim = target.parent / f".{target.name}{CLAIM}"
    try:
        _take_claim(claim, target, what)
        try:
            yield
        finally:
            claim.unlink(missing_ok=True)
    finally:
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()


def _take_claim(claim: Path, target: Path, what: str) -> None:
    for _ in range(2):
        try:
            handle = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = claim.read_text().strip()
            except OSError:
                holder = ""
            if holder and owner_alive(holder) is False:
                claim.unlink(missing_ok=True)  # left by a run that was killed: take it over
                continue
            raise FileExistsError(f"{what} {target} is being written by another vosrt run (process {holder or '?'}); "
                                  f"wait for it to end, or name another output (if no such run is going on, delete "
                                  f"{claim})") from None
        with os.fdopen(handle, "w") as f:
            f.write(owner() + "\n")
        return
    raise FileExistsError(f"{what} {target}: could not claim it ({claim} keeps coming back); try again")


@contextlib.contextmanager
def staged_file(target: str | Path, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A new empty file beside ``target`` to write: when the block completes and ``check(path)``
    (read it back; raise if it is not right) passes, it replaces ``target``; otherwise it is removed."""
    target = Path(target)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"folder not found for {target}: {target.parent}")
    remove_stale(target)
    prefix, suffix = temporary_name(target)
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(handle)
    path = Path(name)
    try:
        yield path
        if check is not None:
            check(path)
        os.chmod(path, file_mode())
        os.replace(path, target)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` through :func:`staged_file`, read back before it replaces ``target``."""
    def check(path: Path) -> None:
        if path.read_text() != text:
            raise OSError(f"could not write {target}: what was written reads back differently (disk full?)")

    with staged_file(target, check) as path:
        path.write_text(text)


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """A new empty folder beside ``target`` (permissions of :func:`folder_mode`; the folders above
    it are made as needed), removed with what it holds, and with the folders made for it, when the
    block raises. The caller moves it or its files into place."""
    target = Path(target)
    made = [parent for parent in reversed(target.parents) if not parent.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    prefix, suffix = temporary_name(target)
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
    try:
        os.chmod(staging, folder_mode())
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


@contextlib.contextmanager
def replaced_folder(target: str | Path, replaceable: Callable[[Path], bool], what: str, kind: str
                    ) -> Iterator[Path]:
    """A staging folder (:func:`staged_folder`) that replaces the folder ``target`` when the block
    completes. ``target`` may be absent, an empty folder, or a folder ``replaceable(target)``
    accepts (``kind`` names those in the error, e.g. "a vosrt export"); anything else, and a
    protected location (:func:`check_not_protected`), is refused before the block runs and again
    before the swap. The old folder is moved aside first and deleted only once the new one is in place."""
    target = Path(target)
    check_replaceable(target, replaceable, what, kind)
    with staged_folder(target) as staging:
        yield staging
        check_replaceable(target, replaceable, what, kind)
        if target.exists():
            _swap(staging, target)
        else:
            staging.rename(target)


def check_replaceable(target: Path, replaceable: Callable[[Path], bool], what: str, kind: str) -> None:
    """The checks of :func:`replaced_folder`, as a FileExistsError or ValueError."""
    check_not_protected(target, what)
    if target.is_symlink():
        raise FileExistsError(f"{what} {target} is a symbolic link; name the folder itself or a new one")
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{what} {target} exists and is not a folder; name a new folder")
    if any(target.iterdir()) and not replaceable(target):
        raise FileExistsError(f"{what} {target} exists and is not {kind}: vosrt replaces only {kind}; "
                              "name a new folder (or delete this one yourself)")


def _swap(staging: Path, target: Path) -> None:
    """Put ``staging`` in the place of the folder ``target``; the old one is deleted afterwards."""
    prefix, suffix = temporary_name(target)
    old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=target.parent))
    os.rename(target, old)  # onto the empty folder mkdtemp made: atomic on POSIX
    try:
        staging.rename(target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_folder_to_fill(folder: str | Path, sources: Iterable[tuple[str, str | Path | None]], overwrite: bool,
                        what: str) -> None:
    """The rules of a folder a command fills with files (``segment --output``): not protected, not
    in the inputs (``sources``, see :func:`check_outside`), and absent or empty unless
    ``overwrite``, which replaces only the files the run writes (see :func:`move_files`)."""
    folder = Path(folder)
    check_not_protected(folder, what)
    check_outside(folder, sources, what)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{what} {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{what} {folder} is not empty; name a new folder, or pass --overwrite to replace "
                              "the files this run writes (other files are left as they are)")


def check_file_to_write(path: str | Path, sources: Iterable[tuple[str, str | Path | None]], overwrite: bool,
                      what: str) -> None:
    """The rules of a file a command writes (``segment --overlay``): its folder exists, it is not in
    the inputs (``sources``), and it is absent unless ``overwrite``."""
    path = Path(path)
    check_outside(path, sources, what)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder for {what} {path} not found: {path.parent}")
    if path.is_dir():
        raise FileExistsError(f"{what} {path} is a folder; name a file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} exists; name a new file, or pass --overwrite to replace it")


def check_still_free(target: Path, overwrite: bool, what: str) -> None:
    """At the final move: FileExistsError when, without ``overwrite``, the folder ``target`` is no
    longer absent or empty (or the file ``target`` now exists): something else wrote it while this
    run was going, and it is not replaced."""
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return
    raise FileExistsError(f"{what} {target} was written by something else while this run was going; it is left as it "
                          "is and this run's output is not kept: name a new output, or pass --overwrite")


def move_files(staging: Path, folder: Path) -> list[str]:
    """Move every file of ``staging`` into ``folder`` (replacing files of the same names), or
    ``staging`` itself when ``folder`` does not exist. Returns the names of the files ``folder``
    holds besides them."""
    if not folder.exists():
        staging.rename(folder)
        return []
    written = set()
    for path in sorted(staging.iterdir()):
        os.replace(path, folder / path.name)
        written.add(path.name)
    staging.rmdir()
    return sorted(p.name for p in folder.iterdir() if p.name not in written)
