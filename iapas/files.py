"""Writing files atomically: a reader (or a resumed run) sees the old file or the whole new one, never half.

Temporary files are named `.<name>.iapas-tmp.<pid>.<token><suffix>`: hidden (so no image search reads
them back), recognisable, and tagged with the writer's process id, so that `remove_stale_temporaries`
can delete those a killed run left behind without touching a live run's.
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Callable

from .errors import OutputError

FINGERPRINT_FILE = "iapas-fingerprint.json"  # marks a folder of iapas results (iapas/runs/fingerprint.py writes it)

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
    never sees a half-written directory under the final name.
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
