"""bf16 autocast against fp32 on the CPU for SAM ViT-B's encoder and Grounding DINO-T (see README.md here).

Usage: PYTHONPATH=. python benchmarks/bf16_components.py
The full-size random-weight models `iapas bench --random-full` builds, one 1024x1024 random image; best of 2
after a warm-up (detection: one run after a warm-up). Prints seconds and the encoder's relative mean difference.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from iapas.backends import load_detector, load_segmenter
from iapas.weights.random_full import random_full_models


def timed(name: str, run, repeat: int = 2):
    result = run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    print(f"{name}: {best:.2f} s", flush=True)
    return result


def main() -> None:
    cpu = torch.device("cpu")
    detector_dir, sam_path = random_full_models(None, "hf-grounding-dino", "sam")
    segmenter = load_segmenter("sam", sam_path, cpu)
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    encoder, pixels = segmenter.predictor.model.image_encoder, segmenter.encoder_inputs(image)
    with torch.inference_mode():
        full = timed("SAM ViT-B encoder fp32", lambda: encoder(pixels))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = timed("SAM ViT-B encoder bf16", lambda: encoder(pixels))
        print(f"relative mean difference {((full - half.float()).abs().mean() / full.abs().mean()).item():.4f}")
        detector = load_detector("hf-grounding-dino", detector_dir, cpu)

        def detect():
            detector.forget_features()  # each run encodes the image
            return detector.detect(image, ["abnormal", "defect"], 0.2, 0.2)

        timed("Grounding DINO-T 800 px fp32", detect, repeat=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            timed("Grounding DINO-T 800 px bf16", detect, repeat=1)


if __name__ == "__main__":
    main()
