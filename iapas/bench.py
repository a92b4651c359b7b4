"""`iapas bench`: per-stage wall time of a method (IAP-AS by default) on one image."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from .batch import Segment
from .config import Config
from .device import resolve_device
from .images import load_image


@dataclass(frozen=True)
class BenchOptions:
    """What to time and how often."""

    image: Path
    method: str = "iapas"
    repeat: int = 5
    warmup: int = 1


def synchronize() -> None:
    """Wait for queued GPU work, so a stage's time is its own."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_bench(options: BenchOptions, config: Config, build: Callable[[], Segment]) -> int:
    """Load the method once (`build`), warm up, then report median and mean milliseconds per stage over `repeat` runs."""
    pixels = load_image(options.image, config.max_image_pixels).pixels  # a bad image fails before any model loads
    load_start = time.perf_counter()
    segment = build()
    load_seconds = time.perf_counter() - load_start
    for _ in range(max(0, options.warmup)):
        segment(pixels)
    synchronize()
    runs: dict[str, list[float]] = {}
    totals = []
    for _ in range(max(1, options.repeat)):
        start = time.perf_counter()
        result = segment(pixels)
        synchronize()
        totals.append(time.perf_counter() - start)
        for name, seconds in result.timings.items():
            runs.setdefault(name, []).append(seconds)
    title = (f"iapas bench {options.method}: {options.image} ({pixels.shape[1]}x{pixels.shape[0]}), "
             f"device {resolve_device(config.device)}, {len(totals)} runs")
    table = Table(title=title)
    for column in ("stage", "median ms", "mean ms", "share"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    total_median = statistics.median(totals)
    for name, values in runs.items():
        median = statistics.median(values)
        table.add_row(name, f"{median * 1e3:.1f}", f"{statistics.mean(values) * 1e3:.1f}", f"{median / total_median:.0%}")
    table.add_row("[b]total[/b]", f"{total_median * 1e3:.1f}", f"{statistics.mean(totals) * 1e3:.1f}", "100%")
    console = Console(width=120)
    console.print(table)
    console.print(f"model loading: {load_seconds:.2f} s; boxes in last run: {len(result.boxes)}")
    return 0
