"""The Ray engine: the same per-image pipeline on a Ray cluster, through Ray Data.

The driver lists the inputs, drops those already finished (the local engine's resume rule), and
hands the rest to `Dataset.map_batches` over a pool of actors. Each actor builds the method once
(`make_segment`, pickled to it) on its own CPU or GPU, segments its batches, and writes each image's
files with the local engine's atomic writer; the driver only collects one status row per image.
Inputs are local paths (a folder, files, a list file) or URIs that Ray Data reads (s3://, gs://, ...).

What the user sees is the local engine's: one progress bar on the driver (a row per finished image),
the random-weights warning (said by the driver, since the models load in the actors) and the summary
line; Ray's and Ray Data's own logs and bars are quiet unless `verbose` (`iapas segment --verbose`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tqdm import tqdm

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..runs.batch import BatchSummary, Segment, failure_message, segment_each
from ..errors import IapasError
from ..images import LoadedImage, load_image
from ..runs.claims import claim_path, try_claim
from ..runs.outputs import assign_names, is_done, write_result

ROWS_PER_BATCH = 4  # images per map_batches call: small, so progress moves and failures stay local


def rows_per_call(batch_size: int) -> int:
    """Rows per map_batches call: whole method batches (`--batch-size`), at least ROWS_PER_BATCH rows."""
    return batch_size * -(-ROWS_PER_BATCH // batch_size)


def is_uri(item: str | Path) -> bool:
    """Whether an input names a remote object (scheme://...) rather than a local path."""
    return "://" in str(item)


class SegmentActor:
    """One Ray actor: builds the method once, then segments and writes the images of each batch it gets.

    The images of a batch are claimed and decoded first, then go to the method `batch_size` at a time
    (through its `many`, as the local engine's `run_batch` does), and each is written as it comes back.
    """

    def __init__(self, make_segment: Callable[[], Segment], out_dir: str, max_pixels: int,
                 extra_record: dict[str, Any] | None, bit_window: Any = None, overwrite: bool = False,
                 batch_size: int = 1) -> None:
        self.segment = make_segment()
        self.out_dir, self.max_pixels, self.extra_record = Path(out_dir), max_pixels, extra_record
        self.bit_window, self.overwrite, self.batch_size = bit_window, overwrite, batch_size
        self.fingerprint = (extra_record or {}).get("fingerprint", "")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [str(source) for source in batch["source"]]
        statuses, messages = [""] * len(sources), [""] * len(sources)

        def fail(index: int, error: Exception) -> None:  # one odd image never stops the batch: named, as locally
            statuses[index], messages[index] = "failed", failure_message(Path(sources[index]), error)

        with contextlib.ExitStack() as claims:  # every claim is released when the batch is written, whatever happens
            ready: list[tuple[int, LoadedImage]] = []
            for index, (stem, payload) in enumerate(zip(batch["stem"], batch["bytes"])):
                try:
                    status = self._claim(str(stem), claims)
                    if status:
                        statuses[index] = status
                        continue
                    ready.append((index, self._load(sources[index], payload)))
                except Exception as error:  # noqa: BLE001 - this image's failure
                    fail(index, error)
            for start in range(0, len(ready), self.batch_size):
                chunk = ready[start:start + self.batch_size]
                for (index, loaded), outcome in zip(chunk, segment_each(self.segment, [loaded.pixels for _, loaded in chunk])):
                    try:
                        if isinstance(outcome, Exception):
                            raise outcome
                        write_result(self.out_dir, str(batch["stem"][index]), loaded.pixels, Path(sources[index]), outcome,
                                     self.extra_record)
                        statuses[index] = "done"
                    except Exception as error:  # noqa: BLE001 - this image's failure
                        fail(index, error)
        return {"source": batch["source"], "status": np.array(statuses), "message": np.array(messages)}

    def _claim(self, stem: str, claims: contextlib.ExitStack) -> str:
        """Claim one output under the local engine's rule: "" (claimed, to segment), "skipped" or "elsewhere".

        Another run (local or Ray) on the same output folder holds the claim while it works on the image;
        one that finished it meanwhile leaves a result made under this run's fingerprint.
        """
        claim = try_claim(claim_path(self.out_dir, stem))
        if claim is None:
            return "elsewhere"
        claims.enter_context(claim)
        if not self.overwrite and is_done(self.out_dir, stem, self.fingerprint):
            return "skipped"
        return ""

    def _load(self, source: str, payload: Any) -> LoadedImage:
        if isinstance(payload, (bytes, bytearray, np.bytes_)) and len(payload):  # a URI's bytes, read by Ray Data
            with tempfile.NamedTemporaryFile(suffix=Path(source).suffix or ".png") as handle:
                handle.write(bytes(payload))
                handle.flush()
                return load_image(handle.name, self.max_pixels, self.bit_window)
        return load_image(source, self.max_pixels, self.bit_window)


DEFAULT_CONNECT_TIMEOUT_S = 30.0  # --connect-timeout: how long a cluster address may take to accept a connection


def check_reachable(address: str | None, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Fail in one line when a cluster address (or RAY_ADDRESS) does not accept a TCP connection within `timeout`.

    ray.init retries an unreachable address for minutes; a plain connect to its host and port answers at
    once (refused) or within the timeout (filtered). "auto", "local" and no address at all start or find a
    local Ray and are left to it.
    """
    import socket

    address = address or os.environ.get("RAY_ADDRESS", "")
    if not address or address in ("auto", "local"):
        return
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise IapasError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT, auto, local)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise IapasError(f"cannot reach the Ray cluster at {address} ({reason} within {timeout:g} s); check --address "
                         "and that the cluster runs, or raise --connect-timeout") from None


def run_ray(make_segment: Callable[[], Segment], inputs: list[tuple[Path, Path | None]], out_dir: Path,
            overwrite: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, progress: bool = True,
            extra_record: dict[str, Any] | None = None, fingerprint: str = "", bit_window: Any = None,
            address: str | None = None, workers: int = 0, batch_size: int = 1,
            uris: list[str] | None = None, report: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, verbose: bool = False,
            model_paths: tuple[Path, ...] = (), **_: Any) -> BatchSummary:
    """Segment `inputs` (and `uris`) on a Ray cluster; finished images are skipped, as locally.

    Each actor hands `batch_size` images at a time to the method (its `many`), as the local engine does.
    `model_paths` are the files the actors will load: the driver warns here when they are random demo weights.
    """
    from ..config import at_least_one

    check_reachable(address, connect_timeout)  # before Ray starts: an unreachable cluster is one line, not a hang
    try:
        import ray
    except ImportError:
        raise IapasError("the ray engine needs Ray: pip install 'ray[data]'") from None
    batch_size = at_least_one(batch_size, "batch_size")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    local = [(str(path), name) for path, name in assign_names(inputs)]
    remote = [(uri, uri.split("://", 1)[1].lstrip("/")) for uri in (uris or [])]  # bucket/key, suffix kept, like local names
    todo = [(source, name) for source, name in local + remote if overwrite or not is_done(out_dir, name, fingerprint)]
    record = {**(extra_record or {}), **({"fingerprint": fingerprint} if fingerprint else {})}
    summary = BatchSummary(total=len(local) + len(remote), skipped=len(local) + len(remote) - len(todo))
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary
    from ..backends.base import warn_if_demo

    for path in model_paths:  # the actors' own warning goes to their logs, which the driver does not show
        warn_if_demo(Path(path))
    started_here = not ray.is_initialized()
    if started_here:
        with core_log_level("info" if verbose else "fatal"), quiet_stderr(not verbose):
            ray.init(address=address, include_dashboard=False, log_to_driver=verbose, ignore_reinit_error=True,
                     logging_level=logging.INFO if verbose else logging.ERROR)
    bar = tqdm(total=summary.total, initial=summary.skipped, desc="segment", unit="img", disable=not progress,
               dynamic_ncols=True)  # the local engine's bar
    rows: list[dict[str, Any]] = []
    try:
        quiet_ray_data(ray, verbose)
        dataset = _dataset(ray, todo, max_pixels)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        pool = workers or max(1, gpus or int(resources.get("CPU", 1)))
        results = dataset.map_batches(
            SegmentActor, fn_constructor_args=(make_segment, str(out_dir), max_pixels, record, bit_window, overwrite,
                                               batch_size),
            batch_size=rows_per_call(batch_size), concurrency=pool, num_gpus=1 if gpus else 0, num_cpus=1,
        ).select_columns(["source", "status", "message"])
        for row in results.iter_rows():  # one row per image, as its actor finishes it
            rows.append(row)
            bar.update()
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
    for row in rows:
        if row["status"] == "done":
            summary.segmented += 1
        elif row["status"] == "skipped":
            summary.skipped += 1
        elif row["status"] == "elsewhere":
            summary.elsewhere += 1
        else:
            summary.failures.append((Path(str(row["source"])), str(row["message"])))
            report(f"iapas: error: {row['message']}")
    summary.seconds = time.perf_counter() - start
    return summary


# loggers of Ray and Ray Data that print at INFO or WARNING on the driver during a run
RAY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.serve", "ray.train")


@contextlib.contextmanager
def core_log_level(level: str):
    """Around `ray.init`: the level of Ray's C++ core logs on this process's stderr (read once, at start), unless the user set it."""
    import os

    chosen = os.environ.get("RAY_BACKEND_LOG_LEVEL")
    if chosen is None:
        os.environ["RAY_BACKEND_LOG_LEVEL"] = level
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)


@contextlib.contextmanager
def quiet_stderr(quiet: bool):
    """Around `ray.init`: what Ray's processes write straight to this process's stderr (fd 2) at start-up goes nowhere.

    Python's exceptions still carry their message; only Ray's own start-up lines (the C++ core's among them,
    which no Python logger reaches) are dropped.
    """
    if not quiet:
        yield
        return
    import os

    sys.stderr.flush()
    saved, sink = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


def quiet_ray_data(ray: Any, verbose: bool) -> None:
    """Ray Data's progress bars, execution banners and INFO logs: shown only when verbose (iapas has its own bar)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = verbose
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def _dataset(ray: Any, todo: list[tuple[str, str]], max_pixels: int):
    """One row per image: its source, its output stem, and its bytes when Ray Data had to read it from a URI."""
    local = [{"source": source, "stem": stem, "bytes": b""} for source, stem in todo if not is_uri(source)]
    remote = [(source, stem) for source, stem in todo if is_uri(source)]
    dataset = ray.data.from_items(local) if local else None
    if remote:
        stems = {**dict(remote), **{source.split("://", 1)[1]: stem for source, stem in remote}}  # Ray drops s3:// etc.
        read = ray.data.read_binary_files([source for source, _ in remote], include_paths=True).map(
            lambda row: {"source": row["path"], "stem": stems.get(row["path"], Path(row["path"]).stem),
                         "bytes": row["bytes"]})
        dataset = read if dataset is None else dataset.union(read)
    return dataset
