"""Time the two batched stages alone: Grounding DINO detection or SAM image encoding, B images per forward.

    IAPAS_CACHE=/tmp/cache python benchmarks/batched_components.py gdino|sam IMAGES BATCH

Uses the full-size random-weight models of `iapas bench --random-full` (built on first use) and its
procedural 1024x1024 images; prints one JSON line: wall and CPU seconds, seconds per image, peak RSS.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from iapas.backends.base import load_detector, load_segmenter
from iapas.bench.runner import BenchOptions, bench_images
from iapas.weights.random_full import random_full_models


def peak_rss_mb() -> int:
    """The process's high-water resident memory (Linux)."""
    with open("/proc/self/status", encoding="utf-8") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) // 1024


def main(component: str, count: int, batch: int) -> dict:
    detector_dir, segmenter_file = random_full_models()
    images = bench_images(BenchOptions(None, images=count, size=1024), 80_000_000)
    device = torch.device("cpu")
    if component == "sam":
        segmenter = load_segmenter("sam", segmenter_file, device)
        run = segmenter.encode_batch
    else:
        detector = load_detector("hf-grounding-dino", detector_dir, device)
        run = lambda chunk: detector.detect_captions_batch(chunk, ["abnormal . defect ."], 0.2, 0.2)  # noqa: E731
    wall, cpu = time.perf_counter(), time.process_time()
    for first in range(0, count, batch):
        run(images[first : first + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"component": component, "images": count, "batch": batch, "wall_s": round(wall, 1),
            "s_per_image": round(wall / count, 2), "cpu_s": round(cpu, 1), "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
