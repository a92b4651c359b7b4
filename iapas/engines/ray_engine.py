"""The Ray engine: the same per-image pipeline on a Ray cluster, through Ray Data.

The driver lists the inputs, drops those already finished (the local engine's resume rule), and
hands the rest to `Dataset.map_batches` over a pool of actors. Each actor builds the method once
(`make_segment`, pickled to it) on its own CPU or GPU, segments its batches, and writes each image's
files with the local engine's atomic writer; the driver only collects one status row per image.
Inputs are local paths (a folder, files, a list file) or URIs that Ray Data reads (s3://, gs://, ...).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..batch import BatchSummary, Segment, failure_message
from ..errors import IapasError
from ..images import load_image
from ..claims import claim_path, try_claim
from ..outputs import assign_names, is_done, write_result

ROWS_PER_BATCH = 4  # images per map_batches call: small, so progress moves and failures stay local


def is_uri(item: str | Path) -> bool:
    """Whether an input names a remote object (scheme://...) rather than a local path."""
    return "://" in str(item)


class SegmentActor:
    """One Ray actor: builds the method once, then segments and writes the images of each batch it gets."""

    def __init__(self, make_segment: Callable[[], Segment], out_dir: str, max_pixels: int,
                 extra_record: dict[str, Any] | None, bit_window: Any = None, overwrite: bool = False) -> None:
        self.segment = make_segment()
        self.out_dir, self.max_pixels, self.extra_record = Path(out_dir), max_pixels, extra_record
        self.bit_window, self.overwrite = bit_window, overwrite
        self.fingerprint = (extra_record or {}).get("fingerprint", "")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        statuses, messages = [], []
        for source, stem, payload in zip(batch["source"], batch["stem"], batch["bytes"]):
            try:
                statuses.append(self._claimed(str(source), str(stem), payload))
                messages.append("")
            except Exception as error:  # one odd image never stops the batch: named, as the local engine does
                statuses.append("failed")
                messages.append(failure_message(Path(str(source)), error))
        return {"source": batch["source"], "status": np.array(statuses), "message": np.array(messages)}

    def _claimed(self, source: str, stem: str, payload: Any) -> str:
        """Segment one image under the local engine's per-output claim: "done", "skipped" or "elsewhere".

        Another run (local or Ray) on the same output folder holds the claim while it works on the image;
        one that finished it meanwhile leaves a result made under this run's fingerprint.
        """
        claim = try_claim(claim_path(self.out_dir, stem))
        if claim is None:
            return "elsewhere"
        with claim:
            if not self.overwrite and is_done(self.out_dir, stem, self.fingerprint):
                return "skipped"
            self._one(source, stem, payload)
        return "done"

    def _one(self, source: str, stem: str, payload: Any) -> None:
        if isinstance(payload, (bytes, bytearray, np.bytes_)) and len(payload):  # a URI's bytes, read by Ray Data
            with tempfile.NamedTemporaryFile(suffix=Path(source).suffix or ".png") as handle:
                handle.write(bytes(payload))
                handle.flush()
                loaded = load_image(handle.name, self.max_pixels, self.bit_window)
        else:
            loaded = load_image(source, self.max_pixels, self.bit_window)
        result = self.segment(loaded.pixels)
        write_result(self.out_dir, stem, loaded.pixels, Path(source), result, self.extra_record)


def run_ray(make_segment: Callable[[], Segment], inputs: list[tuple[Path, Path | None]], out_dir: Path,
            overwrite: bool = False, max_pixels: int = 80_000_000, progress: bool = True,
            extra_record: dict[str, Any] | None = None, fingerprint: str = "", bit_window: Any = None,
            address: str | None = None, workers: int = 0,
            uris: list[str] | None = None, report: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            **_: Any) -> BatchSummary:
    """Segment `inputs` (and `uris`) on a Ray cluster; finished images are skipped, as locally."""
    try:
        import ray
    except ImportError:
        raise IapasError("the ray engine needs Ray: pip install 'ray[data]'") from None
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
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        dataset = _dataset(ray, todo, max_pixels)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        pool = workers or max(1, gpus or int(resources.get("CPU", 1)))
        rows = dataset.map_batches(
            SegmentActor, fn_constructor_args=(make_segment, str(out_dir), max_pixels, record, bit_window, overwrite),
            batch_size=ROWS_PER_BATCH, concurrency=pool, num_gpus=1 if gpus else 0, num_cpus=1,
        ).select_columns(["source", "status", "message"]).take_all()
    finally:
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
