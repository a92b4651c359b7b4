"""Segmenting many images: progress, each result written as it completes, resume on re-run.

One odd image never stops a batch: any failure of one image (a user's bad file or an unexpected error)
becomes one `iapas: error:` line naming it, and the batch goes on. What does stop it is the output folder
failing (disk full, over quota, read-only): every later image would fail the same way, so the batch
ends there with the summary line, keeping what it finished.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .claims import claim_path, remove_free_claims, try_claim
from .errors import IapasError
from .files import is_disk_full, remove_stale_temporaries
from .images import Window, load_image
from .outputs import assign_names, is_done, write_result
from .types import Result

Segment = Callable[[np.ndarray], Result]
Writer = Callable[..., Any]


def report_to_stderr(message: str) -> None:
    """Print a line above the progress bar, on stderr (looked up at call time)."""
    tqdm.write(message, file=sys.stderr)


@dataclass
class BatchSummary:
    """Counts and failures of one batch run; `stopped` says why it ended early, if it did."""

    total: int = 0
    segmented: int = 0
    skipped: int = 0
    elsewhere: int = 0  # claimed by another run working in the same folder
    failures: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""

    def line(self) -> str:
        per_image = self.seconds / self.segmented if self.segmented else 0.0
        other = f"{self.elsewhere} in progress in another run, " if self.elsewhere else ""
        return (
            f"{self.total} images: {self.segmented} segmented, {self.skipped} skipped (already done), {other}"
            f"{len(self.failures)} failed; {self.seconds:.1f} s, {per_image:.2f} s/image"
            + ("; stopped early" if self.stopped else "")
        )

    @property
    def complete(self) -> bool:
        """Every image has its result (here or from another run) and nothing stopped the batch."""
        return not self.failures and not self.stopped


def failure_message(image: Path, error: Exception) -> str:
    """One line for one image's failure; an unexpected error is named by the image it happened on."""
    if isinstance(error, IapasError):
        return str(error)
    detail = str(error).splitlines()[0] if str(error) else ""
    return f"cannot segment {image}: {type(error).__name__}{': ' + detail if detail else ''}"


def storage_message(out_dir: Path, error: OSError, done: int, total: int) -> str:
    """The line that ends a batch whose output folder stopped taking files."""
    code = errno.errorcode.get(error.errno or 0, "")
    reason = error.strerror or os.strerror(error.errno or 0)
    return (f"cannot write results to {out_dir}: {reason}{f' ({code})' if code else ''}; "
            f"stopped after {done} of {total} images, finished results are kept")


def run_batch(
    segment: Segment,
    inputs: list[tuple[Path, Path | None]],
    out_dir: Path,
    overwrite: bool = False,
    max_pixels: int = 80_000_000,
    report: Callable[[str], None] = report_to_stderr,
    progress: bool = True,
    extra_record: dict[str, Any] | None = None,
    fingerprint: str = "",
    bit_window: Window | None = None,
    writer: Writer | None = None,
) -> BatchSummary:
    """Segment every input not already done (under this fingerprint), writing its files the moment it finishes.

    `writer` defaults to outputs.write_result, looked up at call time.
    """
    out_dir = Path(out_dir)
    writer = writer or write_result
    remove_stale_temporaries(out_dir)  # a killed run's half-written files
    remove_free_claims(out_dir)
    record = {**(extra_record or {}), **({"fingerprint": fingerprint} if fingerprint else {})}
    summary = BatchSummary(total=len(inputs))
    start = time.perf_counter()
    bar = tqdm(assign_names(inputs), desc="segment", unit="img", disable=not progress, dynamic_ncols=True)
    for image, name in bar:
        if not overwrite and is_done(out_dir, name, fingerprint):
            summary.skipped += 1
            continue
        claim = try_claim(claim_path(out_dir, name))
        if claim is None:
            summary.elsewhere += 1
            continue
        with claim:
            if not overwrite and is_done(out_dir, name, fingerprint):  # finished by another run meanwhile
                summary.skipped += 1
                continue
            try:
                loaded = load_image(image, max_pixels, bit_window)
                for note in loaded.notes:
                    report(f"note: {image}: {note}")
                result = segment(loaded.pixels)
            except Exception as error:  # noqa: BLE001 - one image's failure, whatever it is, is that image's
                summary.failures.append((image, failure_message(image, error)))
                report(f"iapas: error: {failure_message(image, error)}")
                continue
            try:
                writer(out_dir, name, loaded.pixels, image, result, record)
            except OSError as error:
                if is_disk_full(error):
                    summary.stopped = storage_message(out_dir, error, summary.segmented, summary.total)
                    report(f"iapas: error: {summary.stopped}")
                    break
                message = f"cannot write the results of {image} to {out_dir}: {error.strerror or error}"
                summary.failures.append((image, message))
                report(f"iapas: error: {message}")
                continue
            summary.segmented += 1
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
