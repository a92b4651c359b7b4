"""Time SAM's whole-image mask post-processing against iapas's region-only one, and the scoring sum, on synthetic logits.

Usage: python scripts/bench_mask_postprocessing.py [--boxes 10] [--repeat 5] [--sam SAM.pth]
Logits are box-shaped blobs like SAM's box-prompted masks, each covering 0.5 to 10 % of the image; with
--sam, also the logits a SAM checkpoint decodes for random boxes on a 1024x1024 procedural image.
Prints median milliseconds per image; the masks are checked equal first.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from iapas.acceleration.mask_upsampling import sam_steps, upsample_positive
from iapas.stages.scoring import summed_map


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


def sam_logits(path: str, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, tuple, tuple]:
    """Low-resolution logits a SAM .pth decodes for `count` random boxes, with SAM's input and original sizes."""
    from iapas.backends import load_segmenter
    from iapas.data.synth import synth_sample

    segmenter = load_segmenter("sam", path, torch.device("cpu"))
    image = np.ascontiguousarray(synth_sample("washer", "scratch", rng, 1024)[0])
    corner = rng.uniform(0, 900, (count, 2))
    xyxy = np.concatenate([corner, corner + rng.uniform(30, 200, (count, 2))], 1).astype(np.float32)
    predictor, model = segmenter.predictor, segmenter.predictor.model
    predictor.set_image(image)
    with torch.inference_mode():
        boxes = predictor.transform.apply_boxes_torch(torch.tensor(xyxy), image.shape[:2])
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        low, _ = model.mask_decoder(image_embeddings=predictor.features, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    return low[:, 0].clone(), predictor.input_size, predictor.original_size


def median_ms(first, second, repeat: int) -> tuple[float, float]:
    """Median milliseconds of two callables, run alternately so that a shared machine's load hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for run, kept in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            run()
            kept.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sam", help="also time the logits this SAM .pth decodes (e.g. the --random-full ViT-B)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch threads {torch.get_num_threads()}, {args.boxes} masks per image, median of {args.repeat}")
    cases = []
    for height, width in ((1024, 1024), (1080, 1920), (3000, 4000)):
        scale = 1024 / max(height, width)
        cases.append((f"box blobs {width}x{height}", box_logits(args.boxes, rng),
                      (int(height * scale + 0.5), int(width * scale + 0.5)), (height, width)))
    if args.sam:
        cases.append((f"{args.sam} 1024x1024", *sam_logits(args.sam, args.boxes, rng)))
    for name, logits, input_size, (height, width) in cases:
        scores = rng.random(args.boxes).astype(np.float32)
        fast = upsample_positive(logits, sam_steps(input_size, (height, width)))
        reference = whole_image(logits, input_size, (height, width))
        assert (fast.data != reference).sum() == 0, "masks differ"
        slow_ms, fast_ms = median_ms(lambda: whole_image(logits, input_size, (height, width)),
                                     lambda: upsample_positive(logits, sam_steps(input_size, (height, width))), args.repeat)
        old_ms, new_ms = median_ms(lambda: whole_image_sum(reference, scores),
                                   lambda: summed_map(fast, scores, height, width), args.repeat)
        share = np.mean([(r[2] - r[0]) * (r[3] - r[1]) for r in fast.regions]) / (height * width)
        print(f"{name}: regions {share:.0%} of the image; post-processing {slow_ms:.1f} -> {fast_ms:.1f} ms ({slow_ms / fast_ms:.1f}x); "
              f"scoring {old_ms:.1f} -> {new_ms:.1f} ms ({old_ms / new_ms:.1f}x)")


if __name__ == "__main__":
    main()
