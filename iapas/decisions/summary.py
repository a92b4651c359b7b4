"""`summary.csv`: one row per image of a run's output folder, appended the moment the image's files are written.

Each row goes to the file in one `write` on a file opened for appending, under an exclusive lock on a
hidden lock file beside it, so a killed run leaves whole rows only, and writer threads, processes and
the engines' workers never interleave. Two runs sharing a folder never write one image's row twice,
because claims (`iapas/runs/claims.py`) give each image to one run; a resumed run skips finished images
and their rows are already there. At the end of a run the file is rebuilt from the result records (the
JSON files, which mark completion) and replaced atomically, sorted by output name, which also restores
any row lost between an image's JSON and its append, and leaves exactly one row per finished image.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, appends stay whole lines
    fcntl = None  # type: ignore[assignment]

SUMMARY_FILE = "summary.csv"
COLUMNS = ("image", "output", "image_score", "verdict", "regions", "defect_area_px", "defect_area_fraction", "seconds")


@contextlib.contextmanager
def summary_lock(out_dir: Path) -> Iterator[None]:
    """Hold the folder's summary lock (blocking) for the duration of the block."""
    path = Path(out_dir) / f".{SUMMARY_FILE}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing drops the lock


def summary_row(name: str, record: dict[str, Any]) -> list[str]:
    """The CSV cells of one result record."""
    seconds = sum(float(v) for v in (record.get("timings_s") or {}).values())
    return [str(record.get("image", "")), name, f"{float(record.get('image_score', 0.0)):.6f}",
            str(record.get("verdict", "undecided")), str(len(record.get("regions") or [])),
            str(int(record.get("defect_area_px", 0))), f"{float(record.get('defect_area_fraction', 0.0)):.6f}",
            f"{seconds:.4f}"]


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def append_row(out_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Append one image's row (the header first when the file is new), whole or not at all."""
    path = Path(out_dir) / SUMMARY_FILE
    line = csv_text([summary_row(name, record)]).encode("utf-8")
    with summary_lock(out_dir):
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.fstat(descriptor).st_size == 0:
                line = csv_text([list(COLUMNS)]).encode("utf-8") + line
            os.write(descriptor, line)
        finally:
            os.close(descriptor)


def result_records(out_dir: Path, fingerprint: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(output name, record) of every finished result in the folder (of this fingerprint, when given), by name."""
    out_dir = Path(out_dir)
    for path in sorted(out_dir.rglob("*.json")):
        if path.name.startswith(".") or path.parent == out_dir and path.name.startswith("iapas-"):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or "image" not in record:
            continue
        if "method" not in record or "timings_s" not in record:
            continue
        if fingerprint is not None and record.get("fingerprint", "") != fingerprint:
            continue
        yield path.relative_to(out_dir).as_posix()[: -len(".json")], record


def write_if_changed(path: Path, text: str) -> Path:
    """Replace a file atomically, unless it already holds `text` (a run that did nothing leaves it untouched)."""
    from ..files import atomic_write_text

    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    return atomic_write_text(path, text)


def rebuild_summary(out_dir: Path, fingerprint: str | None = None) -> Path:
    """Rewrite summary.csv from the folder's result records, atomically: one row per finished image."""
    rows = [list(COLUMNS)] + [summary_row(name, record) for name, record in result_records(out_dir, fingerprint)]
    with summary_lock(out_dir):
        return write_if_changed(Path(out_dir) / SUMMARY_FILE, csv_text(rows))
