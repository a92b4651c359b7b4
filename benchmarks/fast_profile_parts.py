"""Per-component CPU time of the fast profile's models at full size with random weights (see README.md here).

Usage: PYTHONPATH=. python benchmarks/fast_profile_parts.py [OUT.json]
One 1024x1024 procedural image and 10 boxes (the issue's typical count): SAM 2.1 Hiera-T and EdgeTAM
(encode + decode 10 boxes at full resolution, and the encoder alone), Grounding DINO-T at a 512 and an
800 px shortest edge. Wall and process CPU seconds, best of 2 after a warm-up (detection: 1 run).
The models are the ones `iapas bench --random-full` builds, loaded through the same loaders.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from iapas.backends import load_detector, load_segmenter
from iapas.weights.random_full import random_full_models


def main(out_path: str | None) -> dict:
    cpu = torch.device("cpu")
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 800, (10, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(30, 220, (10, 2))], 1).astype(np.float32)
    results: dict = {"threads": torch.get_num_threads()}

    def timed(name: str, run, repeat: int = 2) -> None:
        run()  # warm-up
        walls, cpus = [], []
        for _ in range(repeat):
            wall, used = time.perf_counter(), time.process_time()
            run()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - used)
        results[name] = {"wall_s": round(min(walls), 2), "cpu_s": round(min(cpus), 2)}
        print(name, results[name], flush=True)

    detector_dir, sam2_dir = random_full_models(None, "hf-grounding-dino", "hf-sam2")
    _, edgetam_dir = random_full_models(None, "hf-grounding-dino", "hf-edgetam")
    for name, path in (("sam2.1-hiera-t", sam2_dir), ("edgetam", edgetam_dir)):
        segmenter = load_segmenter("auto", path, cpu)
        pixels = segmenter.processor(images=image, return_tensors="pt")["pixel_values"]
        timed(f"{name} encode + 10 boxes", lambda: segmenter.segment_boxes(image, boxes))
        timed(f"{name} encode only", lambda: segmenter.model.get_image_embeddings(pixels))
    for size in (512, 800):
        detector = load_detector("hf-grounding-dino", detector_dir, cpu, input_size=size)

        def detect() -> None:
            detector._last = None  # no reuse of the previous call's image features
            detector.detect(image, ["abnormal", "defect"], 0.2, 0.2)

        timed(f"grounding-dino-t detect {size}px", detect, repeat=1)
    if out_path:
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
