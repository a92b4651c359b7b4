"""Per-image overhead of `iapas segment --engine ray` beside the local engine, on the demo weights.

Both engines segment the same N small procedural images (default 40, 128x128) in fresh processes; from each
run: the wall time, the time to the first finished image, and the steady per-image time (from the first to
the last result file's writing time, over N - 1 images), so start-up (Ray's cluster, the actors' model
loading) and per-image overhead are told apart. Both run the same torch thread count (--threads, default 1: what
a one-CPU Ray actor runs), so the difference is the engine's.

    PYTHONPATH=. python benchmarks/ray_overhead.py [--images 40] [--workers 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def timed_run(command: list[str], out_dir: Path, env: dict) -> dict:
    """Wall seconds, seconds to the first result, and the steady seconds per image of one `iapas segment`."""
    start_wall = time.time()
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    finished = sorted(path.stat().st_mtime for path in out_dir.glob("*.png.json"))
    return {"wall_s": wall, "first_s": finished[0] - start_wall, "images": len(finished),
            "steady_s_per_image": (finished[-1] - finished[0]) / max(1, len(finished) - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1, help="Ray actors (default 1: the local engine's one process)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in both engines (default 1: a Ray actor with one CPU runs one thread)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    python = sys.executable
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        weights, images = scratch / "weights", scratch / "images"
        subprocess.run([python, "-m", "iapas", "weights", "make-demo", str(weights)], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        images.mkdir()
        rng = np.random.default_rng(0)
        for index in range(args.images):
            Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(images / f"{index:03d}.png")
        base = [python, "-m", "iapas", "segment", str(images), "--weights", str(weights), "--device", "cpu", "--no-progress",
                "--threads", str(args.threads)]
        report = {
            "local": timed_run([*base, "-o", str(scratch / "local")], scratch / "local", env),
            "ray": timed_run([*base, "-o", str(scratch / "ray"), "--engine", "ray", "--workers", str(args.workers)],
                             scratch / "ray", env),
        }
    report["ray_minus_local"] = {
        "wall_s": report["ray"]["wall_s"] - report["local"]["wall_s"],
        "start_s": report["ray"]["first_s"] - report["local"]["first_s"],
        "steady_s_per_image": report["ray"]["steady_s_per_image"] - report["local"]["steady_s_per_image"],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
