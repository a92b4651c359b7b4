"""SAM ViT-B's image encoder with iapas's fused attention against segment_anything's own (see README.md here).

Usage: PYTHONPATH=. python benchmarks/sam_attention.py [ROUNDS]
The full-size random-weight SAM ViT-B that `iapas bench --random-full` builds, its relative-position tables
filled as that builder fills them (`with_relative_positions`; a cache built before it had zeros), one 1024x1024 input; the two kernels alternate
for ROUNDS rounds after one warm-up each. Prints the median seconds of each and the largest embedding difference.
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from iapas.backends import load_segmenter
from iapas.backends.sam_attention import reference_attention
from iapas.weights.demo import with_relative_positions
from iapas.weights.random_full import random_full_models


def main(rounds: int) -> None:
    _, path = random_full_models(None, "auto", "sam")
    segmenter = load_segmenter("sam", path, torch.device("cpu"))
    encoder = segmenter.predictor.model.image_encoder
    torch.manual_seed(0)
    encoder.load_state_dict(with_relative_positions(encoder.state_dict()))
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    pixels = segmenter.encoder_inputs(image)
    times: dict[str, list[float]] = {"fused": [], "reference": []}
    with torch.inference_mode():
        fused = encoder(pixels)
        with reference_attention(encoder):
            reference = encoder(pixels)
        for _ in range(rounds):
            for name in times:
                start = time.perf_counter()
                if name == "fused":
                    encoder(pixels)
                else:
                    with reference_attention(encoder):
                        encoder(pixels)
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s over {len(values)} runs")
    print(f"max |fused - reference| = {(fused - reference).abs().max().item():.2e} "
          f"(embedding scale {reference.abs().max().item():.2e})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
