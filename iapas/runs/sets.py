"""Segmenting a folder with a method that scores a SET of images together (MuSc): the set is one unit.

A set method's score for one image depends on every other image of the set, so resume, claims and
fingerprints work on the set: each result records the run's fingerprint joined with the set's identity
(every image's output name, size and modification time); a re-run skips only when every result was made
for exactly this set; adding, removing or changing one image rescores the whole set, and says so. One claim
covers the set, so two runs never score the same folder at once.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..errors import IapasError
from ..files import remove_stale_temporaries
from ..images import Window, load_image
from .batch import BatchSummary, failure_message, report_to_stderr
from .claims import claim_path, remove_free_claims, try_claim
from .outputs import assign_names, is_done, output_paths, write_result

SET_CLAIM = "iapas-set"  # the one claim name of a set run (hidden beside the outputs)


def set_identity(named: list[tuple[Path, str]]) -> str:
    """A short hash of the set: every image's output name, byte size and modification time, in name order."""
    entries = []
    for image, name in sorted(named, key=lambda pair: pair[1]):
        try:
            stat = image.stat()
            entries.append([name, stat.st_size, stat.st_mtime_ns])
        except OSError:
            entries.append([name, None, None])
    return hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()[:16]


def set_fingerprint(fingerprint: str, identity: str) -> str:
    """What each result of a set records: the run's digest and the set's identity."""
    return f"{fingerprint}+set-{identity}"


def earlier_results(out_dir: Path, named: list[tuple[Path, str]], current: str) -> int:
    """How many of the set's images already have a result made for another set (or other settings)."""
    count = 0
    for _, name in named:
        path = output_paths(out_dir, name)[".json"]
        if path.is_file() and not is_done(out_dir, name, current):
            count += 1
    return count


def run_set(
    segment_set: Callable[[list[np.ndarray], list[str]], list[Any]],
    inputs: list[tuple[Path, Path | None]],
    out_dir: Path,
    min_images: int,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    report: Callable[[str], None] = report_to_stderr,
    progress: bool = True,
    extra_record: dict[str, Any] | None = None,
    fingerprint: str = "",
    bit_window: Window | None = None,
    method: str = "musc",
) -> BatchSummary:
    """Score every input as one set (`segment_set(pixels, groups)`), or skip it when this exact set is done.

    An image that cannot be read is reported and left out of the set; fewer than `min_images` readable
    images fail the whole set with one line.
    """
    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)
    remove_free_claims(out_dir)
    named = assign_names(inputs)
    summary = BatchSummary(total=len(named))
    start = time.perf_counter()
    current = set_fingerprint(fingerprint, set_identity(named))
    if not overwrite and named and all(is_done(out_dir, name, current) for _, name in named):
        summary.skipped = len(named)
        return summary
    claim = try_claim(claim_path(out_dir, SET_CLAIM))
    if claim is None:
        summary.elsewhere = len(named)
        summary.stopped = f"another run is scoring a set in {out_dir}"
        report(f"iapas: error: {summary.stopped}; {method} scores the folder as one set, so wait for it to finish")
        return summary
    with claim:
        earlier = 0 if overwrite else earlier_results(out_dir, named, current)
        if earlier:
            report(f"note: {earlier} of the {len(named)} images have results from another set or other settings; "
                   f"{method} scores the images together, so all {len(named)} are rescored as one set")
        loaded, kept = [], []
        for image, name in tqdm(named, desc="read", unit="img", disable=not progress, dynamic_ncols=True):
            try:
                picture = load_image(image, max_pixels, bit_window)
            except Exception as error:  # noqa: BLE001 - this image's, reported; the set goes on without it
                summary.failures.append((image, failure_message(image, error)))
                report(f"iapas: error: {failure_message(image, error)}")
                continue
            for note in picture.notes:
                report(f"note: {image}: {note}")
            loaded.append(picture)
            kept.append((image, name))
        if len(kept) < min_images:
            message = (f"{method} scores a set of at least {min_images} images together; "
                       f"{len(kept)} readable image{'s' if len(kept) != 1 else ''} given")
            summary.failures.extend((image, message) for image, _ in kept)
            summary.seconds = time.perf_counter() - start
            raise IapasError(message)
        groups = [image.parent.name for image, _ in kept]  # the reference divides a set evenly over its folders
        results = segment_set([picture.pixels for picture in loaded], groups)
        record = {**(extra_record or {}), "fingerprint": current, "set": {"images": len(kept), "failed": len(summary.failures)}}
        for (image, name), picture, result in tqdm(list(zip(kept, loaded, results)), desc="write", unit="img",
                                                    disable=not progress, dynamic_ncols=True):
            write_result(out_dir, name, picture.pixels, image, result, record)
            summary.segmented += 1
    summary.seconds = time.perf_counter() - start
    return summary


def progress_ticks(enabled: bool) -> Callable[[str, int], Callable[[], None]]:
    """A factory of progress bars for a method's long inner loops (MuSc's mutual scoring): one tick per step."""

    def start(label: str, total: int) -> Callable[[], None]:
        bar = tqdm(total=total, desc=label, unit="step", disable=not enabled, dynamic_ncols=True)

        def tick() -> None:
            bar.update()
            if bar.n >= total:
                bar.close()

        return tick

    return start
