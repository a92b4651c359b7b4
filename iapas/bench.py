"""`iapas bench`: per-stage wall time of the pipeline on one image."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from .config import Config
from .pipeline import Pipeline


def run_bench(args: argparse.Namespace, config: Config) -> int:
    """Load once, warm up, then report median and mean seconds per stage over `repeat` runs."""
    load_start = time.perf_counter()
    pipeline = Pipeline.from_config(config)
    load_seconds = time.perf_counter() - load_start
    pixels = pipeline.load(args.image).pixels
    options = {"prompts": args.prompt} if args.prompt else {}
    for _ in range(max(0, args.warmup)):
        pipeline.segment(pixels, **options)
    runs: dict[str, list[float]] = {}
    totals = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        result = pipeline.segment(pixels, **options)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        totals.append(time.perf_counter() - start)
        for name, seconds in result.timings.items():
            runs.setdefault(name, []).append(seconds)
    device = next(iter(getattr(pipeline.detector, "model", torch.nn.Linear(1, 1)).parameters())).device
    table = Table(title=f"iapas bench: {args.image} ({pixels.shape[1]}x{pixels.shape[0]}), device {device}, {len(totals)} runs")
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
