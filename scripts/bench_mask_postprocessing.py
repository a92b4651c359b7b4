"""Time SAM's whole-image mask post-processing against iapas's region-only one, and the scoring sum, on synthetic logits.

Usage: python scripts/bench_mask_postprocessing.py [--boxes 10] [--repeat 5]
Logits are box-shaped blobs like SAM's box-prompted masks, each covering 0.5 to 10 % of the image.
Prints median milliseconds per image for each image size; the masks are checked equal first.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from iapas.mask_upsampling import sam_steps, upsample_positive
from iapas.stages.scoring import summed_map
from iapas.types import Masks


def box_logits(count: int, rng: np.random.Generator) -> torch.Tensor:
    """(count, 256, 256) logits, positive inside a random box with soft edges."""
    rows, cols = np.mgrid[0:256, 0:256]
    logits = np.empty((count, 256, 256), np.float32)
    for index in range(count):
        side_h, side_w = np.sqrt(rng.uniform(0.005, 0.10)) * 256 * rng.uniform(0.7, 1.4, 2)
        top, left = rng.uniform(0, 256 - side_h), rng.uniform(0, 256 - side_w)
        inside = np.minimum.reduce([rows - top, top + side_h - rows, cols - left, left + side_w - cols])
        logits[index] = inside + rng.normal(0, 0.5, (256, 256))
    return torch.from_numpy(logits)


def whole_image(logits: torch.Tensor, input_size, original_size) -> np.ndarray:
    values = F.interpolate(logits[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    values = values[..., : input_size[0], : input_size[1]]
    return (F.interpolate(values, original_size, mode="bilinear", align_corners=False)[:, 0] > 0).numpy()


def whole_image_sum(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    total = np.zeros(masks.shape[1:], np.float32)
    for score, mask in zip(scores, masks):
        total += score * mask
    return total


def median_ms(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch threads {torch.get_num_threads()}, {args.boxes} masks per image, median of {args.repeat}")
    for height, width in ((1024, 1024), (1080, 1920), (3000, 4000)):
        scale = 1024 / max(height, width)
        input_size = (int(height * scale + 0.5), int(width * scale + 0.5))
        logits = box_logits(args.boxes, rng)
        scores = rng.random(args.boxes).astype(np.float32)
        fast = upsample_positive(logits, sam_steps(input_size, (height, width)))
        reference = whole_image(logits, input_size, (height, width))
        assert (fast.data != reference).sum() == 0, "masks differ"
        slow_ms = median_ms(lambda: whole_image(logits, input_size, (height, width)), args.repeat)
        fast_ms = median_ms(lambda: upsample_positive(logits, sam_steps(input_size, (height, width))), args.repeat)
        plain = Masks(reference)
        old_ms = median_ms(lambda: whole_image_sum(plain.data, scores), args.repeat)
        new_ms = median_ms(lambda: summed_map(fast, scores, height, width), args.repeat)
        print(f"{width}x{height}: post-processing {slow_ms:.1f} -> {fast_ms:.1f} ms ({slow_ms / fast_ms:.1f}x); "
              f"scoring {old_ms:.1f} -> {new_ms:.1f} ms ({old_ms / new_ms:.1f}x)")


if __name__ == "__main__":
    main()
