"""Segmenting many images: progress, each result written as it completes, resume on re-run.

One odd image never stops a batch: any failure of one image (a user's bad file or an unexpected error)
becomes one `iapas: error:` line naming it, and the batch goes on. What does stop it is the output folder
failing (disk full, over quota, read-only): every later image would fail the same way, so the batch
ends there with the summary line, keeping what it finished.
"""
from __future__ import annotations

import errno
import functools
import os
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from .claims import Claim, claim_path, remove_free_claims, try_claim
from ..config import at_least_one
from ..errors import IapasError
from ..files import is_disk_full, remove_stale_temporaries
from ..images import LoadedImage, Window, load_image
from .outputs import assign_names, is_done, write_result
from ..types import Result

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


PREFETCH_BATCHES = 2  # decoded batches kept ready ahead of the model: one being segmented, one waiting
WRITER_THREADS = 2  # result writers behind the model (PNG encoding and np.save release the GIL for most of their time)


class BatchSegment(Protocol):
    """A Segment that can also take several images at once, handing back each image's Result or exception."""

    def __call__(self, pixels: np.ndarray) -> Result: ...

    def many(self, images: list[np.ndarray]) -> list[Result | Exception]: ...


@dataclass(frozen=True)
class _Event:
    """What the reader found about one input: skipped, claimed elsewhere, decoded, or failed to decode."""

    kind: str  # "skipped" | "elsewhere" | "loaded" | "failed"
    image: Path | None = None
    name: str = ""
    claim: Claim | None = None
    loaded: LoadedImage | None = None
    error: Exception | None = None


def _read(named: list[tuple[Path, str]], out_dir: Path, overwrite: bool, fingerprint: str, max_pixels: int,
          bit_window: Window | None) -> Iterator[_Event]:
    """Each input in order: skip it when done, claim it, decode it (the claim is held by whoever takes the event)."""
    for image, name in named:
        if not overwrite and is_done(out_dir, name, fingerprint):
            yield _Event("skipped")
            continue
        claim = try_claim(claim_path(out_dir, name))
        if claim is None:
            yield _Event("elsewhere")
            continue
        if not overwrite and is_done(out_dir, name, fingerprint):  # finished by another run meanwhile
            claim.release()
            yield _Event("skipped")
            continue
        try:
            yield _Event("loaded", image, name, claim, loaded=load_image(image, max_pixels, bit_window))
        except Exception as error:  # noqa: BLE001 - one image's failure, whatever it is, is that image's
            yield _Event("failed", image, name, claim, error=error)


class _Prefetcher:
    """Runs `_read` in a background thread, a bounded queue ahead of the model; stop() releases what it holds."""

    def __init__(self, events: Iterator[_Event], depth: int) -> None:
        self._events, self._queue = events, queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="iapas-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for event in self._events:
                if not self._offer(event):
                    if event.claim is not None:
                        event.claim.release()
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it there
            self._offer(error)
            return
        self._offer(None)

    def _offer(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[_Event]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """End the reader and release the claims of images it decoded that nobody will segment."""
        self._stop.set()
        self._thread.join()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Event) and item.claim is not None:
                item.claim.release()


class _Immediate:
    """A finished future: the serial run's writer, called on the spot."""

    def __init__(self, call: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        try:
            call()
        except Exception as error:  # noqa: BLE001 - reported by the consumer as a threaded writer's would be
            self._error = error

    def done(self) -> bool:
        return True

    def result(self) -> None:
        if self._error is not None:
            raise self._error


def segment_each(segment: Segment, images: list[np.ndarray]) -> list[Result | Exception]:
    """Each image's Result or exception; several at once through `segment.many` when it has one (both engines use this)."""
    many = getattr(segment, "many", None)
    if many is not None and len(images) > 1:
        try:
            return list(many(images))
        except Exception:  # noqa: BLE001 - one by one below, so the failure is the image's that caused it
            pass
    outcomes: list[Result | Exception] = []
    for pixels in images:
        try:
            outcomes.append(segment(pixels))
        except Exception as error:  # noqa: BLE001 - one image's failure, whatever it is, is that image's
            outcomes.append(error)
    return outcomes


def _segment_all(segment: Segment, events: list[_Event]) -> list[Result | Exception]:
    """Each decoded event's Result or exception (`segment_each` on their pixels)."""
    return segment_each(segment, [event.loaded.pixels for event in events])


def run_batch(
    segment: Segment,
    inputs: list[tuple[Path, Path | None]],
    out_dir: Path,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    report: Callable[[str], None] = report_to_stderr,
    progress: bool = True,
    extra_record: dict[str, Any] | None = None,
    fingerprint: str = "",
    bit_window: Window | None = None,
    writer: Writer | None = None,
    batch_size: int = 1,
    overlap: bool = True,
) -> BatchSummary:
    """Segment every input not already done (under this fingerprint), writing its files the moment it finishes.

    `batch_size` images go to the model together (through `segment.many` when the segment has it).
    With `overlap`, a reader thread decodes (and claims) images ahead of the model, in a queue of
    PREFETCH_BATCHES batches, and WRITER_THREADS threads write results behind it, so the model never
    waits on the disk; without it every step runs in turn, in this thread. Both give the same files,
    the same claims (held from decoding until the image's files are written) and the same one-line
    errors; results are accounted and reported in input order. `writer` defaults to
    outputs.write_result, looked up at call time.
    """
    out_dir = Path(out_dir)
    writer = writer or write_result
    batch_size = at_least_one(batch_size, "batch_size")
    remove_stale_temporaries(out_dir)  # a killed run's half-written files
    remove_free_claims(out_dir)
    record = {**(extra_record or {}), **({"fingerprint": fingerprint} if fingerprint else {})}
    summary = BatchSummary(total=len(inputs))
    start = time.perf_counter()
    named = assign_names(inputs)
    bar = tqdm(total=len(named), desc="segment", unit="img", disable=not progress, dynamic_ncols=True)
    reader = _read(named, out_dir, overwrite, fingerprint, max_pixels, bit_window)
    prefetcher = _Prefetcher(reader, max(2, PREFETCH_BATCHES * batch_size)) if overlap else None
    pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="iapas-write") if overlap else None
    pending: deque[tuple[Any, _Event]] = deque()  # writes in input order, oldest first
    max_pending = WRITER_THREADS + batch_size

    def write(event: _Event, result: Result) -> None:
        try:
            writer(out_dir, event.name, event.loaded.pixels, event.image, result, record)
        finally:
            event.claim.release()

    def settle(block: bool, limit: int = 0) -> bool:
        """Account the finished writes at the head of the queue (all of them, or down to `limit`, when blocking)."""
        while pending and (pending[0][0].done() or (block and len(pending) > limit)):
            future, event = pending.popleft()
            bar.update()
            try:
                future.result()
            except OSError as error:
                if is_disk_full(error):
                    if not summary.stopped:
                        summary.stopped = storage_message(out_dir, error, summary.segmented, summary.total)
                        report(f"iapas: error: {summary.stopped}")
                    continue
                if summary.stopped:
                    continue  # the folder is gone: the stop line already says so
                message = f"cannot write the results of {event.image} to {out_dir}: {error.strerror or error}"
                summary.failures.append((event.image, message))
                report(f"iapas: error: {message}")
                continue
            except Exception as error:  # noqa: BLE001 - a writer's bug is that image's failure, in one line
                message = f"cannot write the results of {event.image} to {out_dir}: {failure_message(event.image, error)}"
                summary.failures.append((event.image, message))
                report(f"iapas: error: {message}")
                continue
            summary.segmented += 1
        return not summary.stopped

    def fail(event: _Event, error: Exception) -> None:
        event.claim.release()
        bar.update()
        summary.failures.append((event.image, failure_message(event.image, error)))
        report(f"iapas: error: {failure_message(event.image, error)}")

    def flush(batch: list[_Event]) -> None:
        outcomes = deque(_segment_all(segment, batch))
        while batch:  # each event leaves the batch as its claim passes to a writer (or is released)
            event, outcome = batch.pop(0), outcomes.popleft()
            if isinstance(outcome, Exception):
                fail(event, outcome)
                continue
            task = functools.partial(write, event, outcome)
            pending.append((pool.submit(task) if pool else _Immediate(task), event))

    batch: list[_Event] = []
    try:
        for event in prefetcher if prefetcher is not None else reader:
            if event.kind in ("skipped", "elsewhere"):
                summary.skipped += event.kind == "skipped"
                summary.elsewhere += event.kind == "elsewhere"
                bar.update()
                continue
            for note in event.loaded.notes if event.loaded else ():
                report(f"note: {event.image}: {note}")
            if event.kind == "failed":
                fail(event, event.error)
                continue
            batch.append(event)
            if len(batch) == batch_size:
                flush(batch)
            if not settle(block=True, limit=max_pending):
                break
        else:
            flush(batch)
        settle(block=True)
    finally:
        for event in batch:  # decoded but never segmented: the batch stopped
            event.claim.release()
        if prefetcher is not None:
            prefetcher.stop()
        if pool is not None:
            pool.shutdown(wait=True)
        settle(block=True)
        reader.close()  # a claim the serial reader holds is released with it
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
