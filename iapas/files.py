"""Writing files atomically: a reader (or a resumed run) sees the old file or the whole new one, never half.

Temporary files are named `.<name>.iapas-tmp.<pid>.<token><suffix>`: hidden (so no image search reads
them back), recognisable, and tagged with the writer's process id, so that `remove_stale_temporaries`
can delete those a killed run left behind without touching a live run's.
"""
from __future__ import annotations

import errno
import os
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .errors import OutputError

TEMP_MARKER = ".iapas-tmp."
NEW_FILE_MODE = 0o666  # what open() asks for; the user's umask takes its bits off, as for any other program


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside `path` carrying this process's id; the suffix stays (np.save, PIL look at it)."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}{path.suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write` on a temporary file beside `path`, then move it into place; the folder is created.

    The temporary file is created with mode 0o666 through the umask (tempfile.mkstemp would make it 0600,
    and os.replace keeps that mode, leaving results readable by their owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = temporary_name(path)
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE))
            break
        except FileExistsError:  # 32 random bits collided: draw again
            continue
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return True
    return True


def writer_pid(name: str) -> int | None:
    """The process id in a temporary file's name, or None when the name is not one of ours."""
    if not name.startswith(".") or TEMP_MARKER not in name:
        return None
    pid_text = name.split(TEMP_MARKER, 1)[1].split(".", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files under `folder` whose writer is no longer running (a killed run's leftovers)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for directory, _, names in os.walk(folder):
        for name in names:
            pid = writer_pid(name)
            if pid is not None and not process_alive(pid):
                stale = Path(directory) / name
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def check_writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Fail with one line, before any model loads, when `path` cannot become a folder we can write into.

    Checked by writing a probe file (os.access is no help: root passes it on a read-only folder, and it
    knows nothing of read-only mounts); a folder that does not exist yet is checked at its nearest
    existing parent, where it would be created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is an existing file, not a folder; choose another -o")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {what} {path}: {existing} is a file, not a folder")
    probe = existing / f".probe{TEMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE))
        probe.unlink()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        where = path if existing == path else f"{path} (in {existing})"
        raise OutputError(f"cannot write to {what} {where}: {reason}") from None
    return path


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Like check_writable_folder, for a single output file: not a folder, and its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is an existing folder, not a file; choose another -o")
    check_writable_folder(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    return path


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def is_disk_full(error: OSError) -> bool:
    """Whether a write failed because of the target's storage (full, over quota, read-only), not the data."""
    return error.errno in DISK_FULL_ERRNOS


def atomic_directory(target: str | Path, fill: Callable[[Path], object]) -> Path:
    """Build a directory whole or not at all: `fill` writes into `<target>.partial/`, renamed to `target` when done.

    An interrupted build leaves only the `.partial` folder, which the next call removes and redoes; a reader
    never sees a half-written directory under the final name. Two processes building one target at once
    must go through `built_once`, which serialises them.
    """
    import shutil

    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        fill(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def lock_descriptor(path: Path, blocking: bool) -> int | None:
    """An open descriptor holding an exclusive flock on `path` (created if needed), or None when busy and not blocking.

    The kernel drops the lock when its process ends, however it ends, so a killed holder never leaves a
    stale lock. Holders remove the file when they release it; a waiter that locked a file removed meanwhile
    (its inode no longer the path's) opens the new one and locks again. The file holds the owner's pid and host.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, NEW_FILE_MODE)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(descriptor)
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return descriptor
        os.close(descriptor)


def release_descriptor(path: Path, descriptor: int) -> None:
    """Remove the lock file, then drop the lock (a waiter then finds a fresh file, not ours)."""
    Path(path).unlink(missing_ok=True)
    os.close(descriptor)


def lock_path_for(target: str | Path) -> Path:
    """The hidden lock file beside `target` that serialises the processes writing it."""
    target = Path(target)
    return target.with_name(f".{target.name}.iapas-lock")


@contextmanager
def exclusive(target: str | Path) -> Iterator[None]:
    """Hold the lock of `target` (processes and threads wait for each other); no-op where flock does not exist."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = lock_path_for(target)
    descriptor = lock_descriptor(path, blocking=True)
    try:
        yield
    finally:
        release_descriptor(path, descriptor)


def built_once(target: str | Path, fill: Callable[[Path], object], complete: Callable[[Path], bool],
               announce: Callable[[], None] = lambda: None) -> Path:
    """A cached directory built by at most one process at a time: wait for the lock, reuse it if `complete`, else build.

    The shared rule for every cache a run fills on first use (a checkpoint's `.hf/` conversion, an export):
    a second process waits for the first and then finds the result complete instead of building over it.
    """
    target = Path(target)
    if complete(target):
        return target
    with exclusive(target):
        if not complete(target):  # another process may have finished it while we waited
            announce()
            atomic_directory(target, fill)
    return target
