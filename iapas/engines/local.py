"""The local engine: one process, one image after another (see `iapas.batch.run_batch`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..batch import BatchSummary, Segment, run_batch


def run_local(make_segment: Callable[[], Segment], inputs: list[tuple[Path, Path | None]], out_dir: Path,
              overwrite: bool = False, max_pixels: int = 80_000_000, progress: bool = True,
              extra_record: dict[str, Any] | None = None, fingerprint: str = "", bit_window: Any = None,
              **_: Any) -> BatchSummary:
    """Build the method once here and segment every input in this process."""
    return run_batch(make_segment(), inputs, out_dir, overwrite=overwrite, max_pixels=max_pixels, progress=progress,
                     extra_record=extra_record, fingerprint=fingerprint, bit_window=bit_window)
