"""`iapas bench`: per-stage wall time, throughput over many images, and the speed ratio against the naive loop.

Two modes. One image (`iapas bench IMAGE`): the method loads once, warms up, and each stage's median and
mean over `--repeat` runs is reported. Throughput (`--images N`): N distinct images (a folder's, or
procedural ones at `--size` when none are given) each segmented once after a warm-up, reporting images
per second, per-stage time and peak memory; `--vs-naive` runs the official code's per-image loop
(`iapas.bench.naive`) on the same loaded models and images, side by side, and reports the ratio. `--json FILE`
keeps the numbers so runs can be compared. Speed is measured here, never in timed tests.
"""
from __future__ import annotations

import json
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ..runs.batch import Segment
from ..config import Config
from ..device import resolve_device
from ..files import atomic_write_text
from ..images import find_images, load_image
from ..acceleration.precision import resolve_precision
from ..types import all_results


@dataclass(frozen=True)
class BenchOptions:
    """What to time and how often."""

    image: Path | None
    method: str = "iapas"
    repeat: int = 5
    warmup: int = 1
    images: int = 0  # >0: throughput over this many distinct images
    size: int = 1024  # side of the procedural images made when no folder is given
    vs_naive: bool = False
    object_tag: str = "object"  # the naive loop's object pass
    json_path: Path | None = None
    batch_size: int = 1  # images per forward in throughput mode (through the segment's `many`)
    # False (--no-size-filter): neither contender drops boxes by size, so both mask the same boxes even where
    # random weights make the naive loop's per-image object size arbitrary; the naive loop still asks its object pass
    size_filter: bool = True


@dataclass
class PipelineSegment:
    """An IAP-AS pipeline as a pixels -> Result callable that keeps its pipeline and prompts visible (for --vs-naive)."""

    pipeline: Any
    prompts: tuple[str, ...]

    def __call__(self, pixels: np.ndarray):
        return self.pipeline.segment(pixels, prompts=self.prompts)

    def many(self, images: list[np.ndarray]) -> list:
        return self.pipeline.segment_outcomes(images, len(images), prompts=self.prompts)


def synchronize() -> None:
    """Wait for queued GPU work, so a stage's time is its own."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PeakMemory:
    """Peak resident memory (CPU, sampled every 10 ms) and peak allocated GPU memory while the block runs."""

    def __init__(self) -> None:
        self.peak_rss_mb = 0.0
        self.peak_gpu_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0.0
        import resource

        return pages * resource.getpagesize() / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss_mb = self.rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20


def median_ms(values: Iterable[float]) -> float:
    values = list(values)
    return 1e3 * statistics.median(values) if values else 0.0


def run_bench(options: BenchOptions, config: Config, build: Callable[[], Segment]) -> int:
    """Load the method once (`build`), warm up, then report median and mean milliseconds per stage over `repeat` runs.

    With `--vs-naive`, `build` must return an IAP-AS `Pipeline`-bound segment (see `pipeline_segment`), whose
    detector and segmenter the naive loop reuses.
    """
    if options.images > 0:
        return run_throughput(options, config, build)
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
    _write_json(options, config, {"mode": "single", "image": str(options.image), "load_s": load_seconds,
                                  "total_ms": {"median": total_median * 1e3, "mean": statistics.mean(totals) * 1e3},
                                  "stages_ms": {name: median_ms(values) for name, values in runs.items()}})
    return 0


def bench_images(options: BenchOptions, max_pixels: int) -> list[np.ndarray]:
    """N distinct images: the folder's (or the one image's folder's) first N, else procedural ones at `size`."""
    if options.image is not None:
        source = Path(options.image)
        paths = find_images(source) if source.is_dir() else [source]
        return [load_image(path, max_pixels).pixels for path in paths[: options.images]]
    from ..data.synth import synth_sample

    rng = np.random.default_rng(0)
    kinds = [("washer", "scratch"), ("board", "hole"), ("tile", "crack"), ("fabric", "stain")]
    images = []
    for index in range(options.images):
        category, defect = kinds[index % len(kinds)]
        canvas, _ = synth_sample(category, defect, rng, options.size)
        images.append(np.ascontiguousarray(canvas))
    return images


Timed = tuple[dict[str, float], int]  # one image's seconds per stage, and how many boxes it masked


@dataclass
class Contender:
    """One way of segmenting the images, timed chunk by chunk: its own busy time, stages, boxes and peak memory."""

    run_chunk: Callable[[list[np.ndarray]], list[Timed]]
    stages: dict[str, list[float]] = field(default_factory=dict)
    per_image: list[float] = field(default_factory=list)
    boxes: list[int] = field(default_factory=list)
    busy_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float = 0.0

    def time_chunk(self, chunk: list[np.ndarray]) -> None:
        """Segment the chunk once; an image's time is its chunk's time shared equally, as batched stages share it."""
        with PeakMemory() as memory:
            began = time.perf_counter()
            timed = self.run_chunk(chunk)
            synchronize()
            seconds = time.perf_counter() - began
        self.busy_s += seconds
        self.per_image.extend([seconds / len(chunk)] * len(chunk))
        self.peak_rss_mb = max(self.peak_rss_mb, memory.peak_rss_mb)
        self.peak_gpu_mb = max(self.peak_gpu_mb, memory.peak_gpu_mb)
        for timing, count in timed:
            self.boxes.append(count)
            for name, value in timing.items():
                self.stages.setdefault(name, []).append(value)

    def report(self) -> dict[str, Any]:
        count, wall = len(self.per_image), self.busy_s
        return {"images": count, "wall_s": wall, "images_per_s": count / wall if wall else 0.0,
                "per_image_ms": median_ms(self.per_image),
                "stages_ms": {name: median_ms(values) for name, values in self.stages.items()},
                "boxes_per_image": float(np.mean(self.boxes)) if self.boxes else 0.0,
                "peak_rss_mb": self.peak_rss_mb, "peak_gpu_mb": self.peak_gpu_mb}


def one_by_one(run: Callable[[np.ndarray], Timed]) -> Callable[[list[np.ndarray]], list[Timed]]:
    """A per-image callable as a chunk callable."""
    return lambda chunk: [run(pixels) for pixels in chunk]


def interleaved_passes(images: list[np.ndarray], contenders: dict[str, Contender], step: int) -> dict[str, dict[str, Any]]:
    """Every contender segments every image once, `step` images at a time, taking turns chunk by chunk.

    Turns (and which contender goes first, alternating) make a machine whose load drifts during the run
    weigh on every contender alike; each contender's images/s is over its own busy time.
    """
    order = list(contenders)
    for number, first in enumerate(range(0, len(images), step)):
        chunk = images[first : first + step]
        for name in order if number % 2 == 0 else order[::-1]:
            contenders[name].time_chunk(chunk)
    return {name: contender.report() for name, contender in contenders.items()}


def timed_result(result: Any) -> Timed:
    """A method's Result as (seconds per stage, boxes masked); methods without boxes count 0."""
    return result.timings, len(getattr(result, "boxes", ()))


def run_throughput(options: BenchOptions, config: Config, build: Callable[[], Segment]) -> int:
    """Throughput over N distinct images, and the naive loop beside it when asked."""
    images = bench_images(options, config.max_image_pixels)
    load_start = time.perf_counter()
    segment = build()
    load_seconds = time.perf_counter() - load_start
    for _ in range(max(0, options.warmup)):
        segment(images[0])
    synchronize()
    many = getattr(segment, "many", None)
    run_many = None
    if options.batch_size > 1 and many is not None:
        for _ in range(max(0, options.warmup)):
            many(images[: options.batch_size])  # the batched path warms up too (its own shapes)

        def batched(chunk: list[np.ndarray]) -> list[Timed]:
            return [timed_result(result) for result in all_results(many(chunk))]

        run_many = batched

    run_chunk = run_many or one_by_one(lambda pixels: timed_result(segment(pixels)))
    # the naive loop's turn may leave the detector holding features of the very image ours does next: drop them
    detector = getattr(getattr(segment, "pipeline", None), "detector", None)
    forget = getattr(detector, "forget_features", None)
    ours = Contender(run_chunk if forget is None else lambda chunk: (forget(), run_chunk(chunk))[1])
    contenders = {"iapas": ours}
    if options.vs_naive:
        contenders["naive"] = naive_contender(options, config, segment, images)
    report: dict[str, Any] = {"mode": "throughput", "load_s": load_seconds, "batch_size": options.batch_size,
                              "batched": run_many is not None, "interleaved": len(contenders) > 1,
                              "image_size": [int(images[0].shape[1]), int(images[0].shape[0])],
                              **interleaved_passes(images, contenders, options.batch_size if run_many else 1)}
    if options.vs_naive:
        report["speedup_vs_naive"] = report["iapas"]["images_per_s"] / max(report["naive"]["images_per_s"], 1e-12)
        # the naive loop runs as the official code does, without autocast; the loaded models (their int8 layers,
        # exported encoders, input size) are shared by both
        report["precision"] = {"iapas": resolve_precision(config.precision, resolve_device(config.device)), "naive": "fp32"}
    print_throughput(options, config, report)
    _write_json(options, config, report)
    return 0


def naive_contender(options: BenchOptions, config: Config, segment: Segment, images: list[np.ndarray]) -> Contender:
    """The official per-image loop on the method's own loaded detector and segmenter, warmed up as ours was."""
    from ..errors import ConfigError
    from .naive import naive_segment

    pipeline = getattr(segment, "pipeline", None)
    if pipeline is None:
        raise ConfigError("--vs-naive compares the IAP-AS pipeline with the official loop: use --method iapas")
    detector, segmenter, prompts = pipeline.detector, pipeline.segmenter, segment.prompts
    detection = config.detection

    def run(pixels: np.ndarray) -> Timed:
        _, timings, boxes = naive_segment(detector, segmenter, pixels, prompts, options.object_tag,
                                          detection.box_threshold, detection.text_threshold, config.filtering.nms_iou,
                                          detection.max_boxes, detection.caption_format, detection.phrase_rule,
                                          config.filtering.size_threshold, options.size_filter)
        return timings, len(boxes)

    for _ in range(max(0, options.warmup)):
        run(images[0])  # the same warm-up as ours
    return Contender(one_by_one(run))


def print_throughput(options: BenchOptions, config: Config, report: dict[str, Any]) -> None:
    """The numbers as a table: one column per contender."""
    contenders = [name for name in ("iapas", "naive") if name in report]
    width, height = report["image_size"]
    table = Table(title=f"iapas bench {options.method}: {report['iapas']['images']} images of {width}x{height}, "
                        f"device {resolve_device(config.device)}, batch size {report.get('batch_size', 1)}")
    table.add_column("")
    for name in contenders:
        table.add_column(name, justify="right")
    rows = [("images / s", "images_per_s", "{:.3f}"), ("ms / image (median)", "per_image_ms", "{:.1f}"),
            ("wall s", "wall_s", "{:.2f}"), ("boxes / image", "boxes_per_image", "{:.1f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}"), ("peak GPU MB", "peak_gpu_mb", "{:.0f}")]
    for label, key, form in rows:
        table.add_row(label, *[form.format(report[name][key]) for name in contenders])
    stages = dict.fromkeys(stage for name in contenders for stage in report[name]["stages_ms"])
    for stage in stages:
        table.add_row(f"  {stage} ms", *[f"{report[name]['stages_ms'][stage]:.1f}" if stage in report[name]["stages_ms"]
                                         else "-" for name in contenders])
    console = Console(width=120)
    console.print(table)
    tail = ""
    if "speedup_vs_naive" in report:
        precision = report["precision"]
        tail = (f"; speed-up vs the naive loop: {report['speedup_vs_naive']:.2f}x (iapas at {precision['iapas']}, "
                f"naive at {precision['naive']}; peak memory is the process's during each one's turns)")
    console.print(f"model loading: {report['load_s']:.2f} s{tail}")


def _write_json(options: BenchOptions, config: Config, report: dict[str, Any]) -> None:
    """Keep the numbers with what produced them (`--json FILE`)."""
    if options.json_path is None:
        return
    import iapas

    record = {"method": options.method, "device": str(resolve_device(config.device)), "torch": torch.__version__,
              "iapas_version": iapas.__version__, "machine": platform.machine(), "processor": platform.processor(),
              "threads": torch.get_num_threads(), "config": config.to_dict(), **report}
    atomic_write_text(options.json_path, json.dumps(record, indent=2) + "\n")
