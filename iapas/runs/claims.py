"""Claims: two runs writing into one output folder never work on the same image.

A claim is an advisory lock (flock) on a hidden file beside the image's outputs, `.<name>.iapas-claim`.
The kernel drops the lock when its process ends, however it ends, so a killed run's claims are free for
the next run to take: no stale-pid guessing, no reuse of a dead process's id. The file holds the owner's
pid and host for a person looking at it. Where flock does not exist (Windows) claims always succeed.
"""
from __future__ import annotations

from pathlib import Path

from ..files import lock_descriptor, release_descriptor

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CLAIM_SUFFIX = ".iapas-claim"


def claim_path(out_dir: Path, name: str) -> Path:
    """Where the claim of one output name lives: hidden, beside that output's files."""
    target = Path(out_dir) / name
    return target.with_name(f".{target.name}{CLAIM_SUFFIX}")


class Claim:
    """A held claim; release() (or leaving the `with` block) removes the file and drops the lock."""

    def __init__(self, path: Path, descriptor: int | None) -> None:
        self.path, self.descriptor = path, descriptor

    def release(self) -> None:
        if self.descriptor is None:
            return
        release_descriptor(self.path, self.descriptor)
        self.descriptor = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_claim(path: Path) -> Claim | None:
    """Claim `path` for this run, or None when another live run (process or thread) holds it."""
    if fcntl is None:
        return Claim(path, None)
    descriptor = lock_descriptor(path, blocking=False)
    return None if descriptor is None else Claim(path, descriptor)


def remove_free_claims(folder: Path) -> int:
    """Delete claim files nobody holds (left by a killed run after its result was complete)."""
    removed = 0
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).rglob(f".*{CLAIM_SUFFIX}"):
        claim = try_claim(path)
        if claim is not None:
            claim.release()
            removed += 1
    return removed
