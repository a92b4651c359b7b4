"""The local engine: one process, images in input order, one or a batch at a time (see `iapas.runs.batch.run_batch`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..runs.batch import BatchSummary, Segment, run_batch


def run_local(make_segment: Callable[[], Segment], inputs: list[tuple[Path, Path | None]], out_dir: Path,
              overwrite: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, progress: bool = True,
              extra_record: dict[str, Any] | None = None, fingerprint: str = "", bit_window: Any = None,
              batch_size: int = 1, **_: Any) -> BatchSummary:
    """Build the method once here and segment every input in this process, `batch_size` images at a time."""
    return run_batch(make_segment(), inputs, out_dir, overwrite=overwrite, max_pixels=max_pixels, progress=progress,
                     extra_record=extra_record, fingerprint=fingerprint, bit_window=bit_window, batch_size=batch_size)
