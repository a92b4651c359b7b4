"""Start-up cost of the `iapas` command: `iapas --help`, and `iapas segment`'s time to its first finished image.

Targets (issue 18): `iapas --help` under 0.5 s and 100 MB; `iapas segment` on the demo weights reaches its
first finished image less than 1 s after the unavoidable floor: importing torch and transformers, loading
the models, and the image's own compute, each measured here in a fresh process of the same run.

    PYTHONPATH=. python benchmarks/startup.py [--repeat 5] [--weights DIR] [--image examples/images/washer_scratch.png]

Without --weights, the demo weights are built in a temporary folder first (not timed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the floor, in one fresh process: each step timed in turn (the models through the API the command uses)
FLOOR = """
import json, sys, time
t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
from iapas.cli.common import base_config
from iapas.cli import build_parser
from iapas.images import load_image
from iapas.methods.iapas.pipeline import Pipeline
args = build_parser().parse_args(["segment", sys.argv[1], "--weights", sys.argv[2], "--device", "cpu"])
config = base_config(args)
pipeline = Pipeline.from_config(config)
t2 = time.perf_counter()
pixels = load_image(sys.argv[1], config.max_image_pixels).pixels
pipeline.segment(pixels)  # a first image pays one-off costs (kernels, caches) as the command's first image does
t3 = time.perf_counter()
print(json.dumps({"import torch+transformers": t1 - t0, "load models": t2 - t1, "first image compute": t3 - t2}))
"""


def run_measured(command: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess | None]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{command} failed: {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, None


def time_to_first_image(command: list[str], out_dir: Path, env: dict) -> tuple[float, float]:
    """Seconds from starting `command` to its first result record in `out_dir`, and to its exit."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    first = None
    while child.poll() is None:
        if first is None and any(out_dir.glob("*.png.json")):
            first = time.perf_counter() - start
        time.sleep(0.005)
    total = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{command} failed with {child.returncode}")
    return (first if first is not None else total), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement (the median is reported)")
    parser.add_argument("--weights", help="weights dir (default: demo weights built in a temporary folder)")
    parser.add_argument("--image", default=str(ROOT / "examples" / "images" / "washer_scratch.png"))
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    python = sys.executable

    help_runs = [run_measured([python, "-m", "iapas", "--help"], env) for _ in range(args.repeat)]
    segment_help = [run_measured([python, "-m", "iapas", "segment", "--help"], env) for _ in range(args.repeat)]
    report = {
        "iapas --help": {"seconds": statistics.median(r[0] for r in help_runs), "peak_rss_mb": max(r[1] for r in help_runs)},
        "iapas segment --help": {"seconds": statistics.median(r[0] for r in segment_help),
                                 "peak_rss_mb": max(r[1] for r in segment_help)},
    }
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights
        if not weights:
            weights = str(Path(scratch) / "weights")
            subprocess.run([python, "-m", "iapas", "weights", "make-demo", weights], env=env, cwd=ROOT, check=True,
                           capture_output=True)
        firsts, totals, floors = [], [], []
        for index in range(args.repeat):
            out_dir = Path(scratch) / f"out{index}"
            first, total = time_to_first_image([python, "-m", "iapas", "segment", args.image, "-o", str(out_dir), "--weights",
                                                weights, "--device", "cpu", "--no-progress"], out_dir, env)
            firsts.append(first)
            totals.append(total)
            floor = subprocess.run([python, "-c", FLOOR, args.image, weights], env=env, cwd=ROOT, check=True,
                                   capture_output=True, text=True)
            floors.append(json.loads(floor.stdout.strip().splitlines()[-1]))
    parts = {name: statistics.median(f[name] for f in floors) for name in floors[0]}
    floor_total = statistics.median(sum(f.values()) for f in floors)
    report["iapas segment, demo weights"] = {
        "to first finished image": statistics.median(firsts), "to exit": statistics.median(totals),
        "floor": floor_total, "floor parts": parts, "above the floor": statistics.median(firsts) - floor_total,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
