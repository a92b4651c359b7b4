"""The official code's per-image loop, run on iapas's loaded models, as the baseline `iapas bench --vs-naive` times.

Rule by rule as github sybeam27/IAP-ZSAS `test_zsas.py` / `utils/function.py` process an image: Grounding
DINO once with the object tag alone (`process_object_output`: the top-scoring box gives the object size),
once more with the defect caption (`get_grounding_output`), NMS, the 0.8 x object-size filter
(`process_size_output`), SAM's `set_image` and every kept box through `predict_torch` with masks returned at
full resolution, then the per-box sum of score x mask and a per-image min-max normalisation
(`process_anomaly_segmentation`, `normalize`). Nothing is shared between the two detector passes.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import numpy as np
import torch

from ..stages.filtering import NO_OBJECT_SIZE, filter_by_size, nms, object_size as object_size_of
from ..stages.scoring import minmax_per_image
from ..types import Boxes

OFFICIAL_SIZE_FACTOR = 0.8  # keep a box whose area ratio is below 0.8 x the object's (test_zsas.py)


def full_resolution_masks(segmenter: Any, image: np.ndarray, boxes: Boxes) -> np.ndarray:
    """(N, H, W) bool masks the way the official code gets them: one encoding, all boxes, full-resolution masks."""
    if not len(boxes):
        return np.zeros((0, *image.shape[:2]), bool)
    # SAM backends keep the official whole-image post-processing beside iapas's region-only one, and the
    # reference encoder kernels beside iapas's fused attention (iapas/backends/sam_attention.py)
    with getattr(segmenter, "reference_kernels", contextlib.nullcontext)():
        return getattr(segmenter, "segment_boxes_full_resolution", segmenter.segment_boxes)(image, boxes.xyxy)


def detect_as_recipe(detector: Any, image: np.ndarray, prompts: Sequence[str], box_threshold: float,
                     text_threshold: float, caption_format: str, phrase_rule: str, max_boxes: int = 0) -> Boxes:
    """One full detector pass (its own image encoding): iapas's detection stage, with nothing kept from before."""
    from ..stages.detection import DetectStage

    if hasattr(detector, "forget_features"):
        detector.forget_features()  # the official code shares nothing between passes: each encodes the image again
    # the official code keeps boxes as predicted until SAM (utils/function.py process_anomaly_segmentation clamps)
    stage = DetectStage(detector, caption_format, phrase_rule, max_boxes, clamp=False)
    return stage.run(image, tuple(prompts), box_threshold, text_threshold)["boxes"]


@torch.inference_mode()
def naive_segment(detector: Any, segmenter: Any, image: np.ndarray, prompts: Sequence[str], object_tag: str,
                  box_threshold: float, text_threshold: float, nms_iou: float,
                  max_boxes: int = 0, caption_format: str = "dots", phrase_rule: str = "words",
                  size_factor: float = OFFICIAL_SIZE_FACTOR,
                  size_filter: bool = True) -> tuple[np.ndarray, dict[str, float], Boxes]:
    """The official per-image order; returns the normalised map, seconds per step and the boxes it masked.

    Captions are made as the recipe makes them (`caption_format`, `phrase_rule`), so under `--recipe official`
    both contenders ask the detector the same questions and keep the same boxes. `max_boxes` (0: none, as the
    official code) caps the defect boxes as iapas's detection stage does, so that a benchmark on random weights,
    whose saturated scores keep hundreds of boxes, decodes the same boxes in both. `size_filter=False` keeps
    every box whatever the object size (the object pass still runs: its cost is the official order's).
    """
    timings: dict[str, float] = {}
    height, width = image.shape[:2]
    start = time.perf_counter()
    objects = detect_as_recipe(detector, image, [object_tag], box_threshold, text_threshold, caption_format, phrase_rule)
    found = object_size_of(objects, height, width, nms_iou)
    object_size = NO_OBJECT_SIZE if found is None else found
    timings["object_detection"] = time.perf_counter() - start
    start = time.perf_counter()
    defects = detect_as_recipe(detector, image, prompts, box_threshold, text_threshold, caption_format, phrase_rule,
                               max_boxes)
    boxes = nms(defects, nms_iou)
    if size_filter:
        boxes = filter_by_size(boxes, height, width, size_factor * object_size)
    timings["defect_detection"] = time.perf_counter() - start
    start = time.perf_counter()
    boxes = boxes.clamped(height, width)
    masks = full_resolution_masks(segmenter, image, boxes)
    timings["masking"] = time.perf_counter() - start
    start = time.perf_counter()
    heat = np.zeros((height, width), np.float32)
    for score, mask in zip(boxes.scores, masks):  # one box at a time, as the reference loops
        heat += float(score) * mask.astype(np.float32)
    heat = minmax_per_image(heat)
    timings["scoring"] = time.perf_counter() - start
    return heat, timings, boxes
