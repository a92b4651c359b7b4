"""Segmenting many images: progress, each result written as it completes, resume on re-run."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .errors import IapasError
from .images import load_image
from .outputs import is_done, output_stem, write_result
from .types import Result

Segment = Callable[[np.ndarray], Result]


def report_to_stderr(message: str) -> None:
    """Print a line above the progress bar, on stderr (looked up at call time)."""
    tqdm.write(message, file=sys.stderr)


@dataclass
class BatchSummary:
    """Counts and failures of one batch run."""

    total: int = 0
    segmented: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        per_image = self.seconds / self.segmented if self.segmented else 0.0
        return (
            f"{self.total} images: {self.segmented} segmented, {self.skipped} skipped (already done), "
            f"{len(self.failures)} failed; {self.seconds:.1f} s, {per_image:.2f} s/image"
        )


def assign_stems(inputs: list[tuple[Path, Path | None]]) -> list[tuple[Path, str]]:
    """A distinct output stem per input image, stable from run to run."""
    seen: dict[str, int] = {}
    assigned = []
    for image, root in inputs:
        stem = output_stem(image, root)
        seen[stem] = seen.get(stem, 0) + 1
        assigned.append((image, stem if seen[stem] == 1 else f"{stem}__{seen[stem]}"))
    return assigned


def run_batch(
    segment: Segment,
    inputs: list[tuple[Path, Path | None]],
    out_dir: Path,
    overwrite: bool = False,
    max_pixels: int = 80_000_000,
    report: Callable[[str], None] = report_to_stderr,
    progress: bool = True,
    extra_record: dict[str, Any] | None = None,
) -> BatchSummary:
    """Segment every input not already done, writing its files the moment it finishes."""
    summary = BatchSummary(total=len(inputs))
    start = time.perf_counter()
    bar = tqdm(assign_stems(inputs), desc="segment", unit="img", disable=not progress, dynamic_ncols=True)
    for image, stem in bar:
        if not overwrite and is_done(out_dir, stem):
            summary.skipped += 1
            continue
        try:
            loaded = load_image(image, max_pixels)
            for note in loaded.notes:
                report(f"note: {image}: {note}")
            result = segment(loaded.pixels)
            write_result(out_dir, stem, loaded.pixels, image, result, extra_record)
            summary.segmented += 1
        except IapasError as error:
            summary.failures.append((image, str(error)))
            report(f"iapas: error: {error}")
    summary.seconds = time.perf_counter() - start
    return summary
