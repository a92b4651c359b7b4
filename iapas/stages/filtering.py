"""Step 2-2: non-maximum suppression and the size filter of Eq. (3), by one of two rules.

- `calibrated` (iapas recipe): keep a box whose area ratio is below S_threshold, one number per
  category from calibration.
- `object-per-image` (official recipe; utils/function.py process_object_output and
  process_size_output): on every test image, Grounding DINO looks for the object tag; after NMS the
  top-scoring box's area ratio is that image's object size, and an anomaly box is kept when its area
  ratio is below `factor` (0.8) x object size. When no object box is found (the official code fails
  there: torch.max of an empty tensor), iapas takes the object size as the whole image, 1.0, so the
  rule becomes "area ratio < factor", the paper's plain size threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import nms as torchvision_nms

from ..backends.base import Detector
from ..registry import Registry
from ..types import Boxes

NO_OBJECT_SIZE = 1.0  # object size used when the object tag finds no box on an image (documented above)


def nms(boxes: Boxes, iou_threshold: float) -> Boxes:
    """Class-agnostic NMS: drop a box overlapping a higher-scored one by IoU > threshold; highest score first."""
    if len(boxes) == 0:
        return boxes
    keep = torchvision_nms(torch.from_numpy(boxes.xyxy.copy()), torch.from_numpy(boxes.scores.copy()), iou_threshold)
    return boxes.select(keep.numpy())


def filter_by_size(boxes: Boxes, image_height: int, image_width: int, size_threshold: float) -> Boxes:
    """Keep boxes whose area relative to the image is strictly below size_threshold (paper Eq. 3)."""
    if len(boxes) == 0:
        return boxes
    return boxes.select(boxes.area_ratios(image_height, image_width) < size_threshold)


def object_box(object_boxes: Boxes, iou_threshold: float) -> Boxes | None:
    """The top-scoring object box after NMS (utils/function.py process_object_output), as one box; None: no box."""
    kept = nms(object_boxes, iou_threshold)
    if len(kept) == 0:
        return None
    return kept.select([int(np.argmax(kept.scores))])  # first of equal maxima, as torch.max returns


def object_size(object_boxes: Boxes, image_height: int, image_width: int, iou_threshold: float) -> float | None:
    """Area ratio of the top-scoring object box after NMS (utils/function.py process_object_output); None: no box."""
    box = object_box(object_boxes, iou_threshold)
    return None if box is None else float(box.area_ratios(image_height, image_width)[0])


@dataclass
class NmsStage:
    """Removes overlapping detections of the same region."""

    iou_threshold: float
    name: str = "nms"
    inputs: tuple[str, ...] = ("boxes",)
    outputs: tuple[str, ...] = ("boxes",)

    def run(self, boxes: Boxes) -> dict[str, Boxes]:
        return {"boxes": nms(boxes, self.iou_threshold)}


@dataclass
class SizeFilterStage:
    """Drops boxes as large as S_threshold or larger: those are the object, not a defect."""

    name: str = "size_filter"
    inputs: tuple[str, ...] = ("boxes", "image", "size_threshold")
    outputs: tuple[str, ...] = ("boxes",)

    def run(self, boxes: Boxes, image: np.ndarray, size_threshold: float) -> dict[str, Boxes]:
        return {"boxes": filter_by_size(boxes, image.shape[0], image.shape[1], size_threshold)}


@dataclass
class ObjectSizeFilterStage:
    """Drops boxes not smaller than `factor` x this image's object size (the official per-image rule)."""

    detector: Detector
    factor: float
    iou_threshold: float
    caption_format: str = "official"
    phrase_rule: str = "tokens"
    clamp: bool = False  # cut the object boxes to the image before measuring (iapas); the official code does not
    name: str = "size_filter"
    inputs: tuple[str, ...] = ("boxes", "image", "object_tags", "box_threshold", "text_threshold")
    outputs: tuple[str, ...] = ("boxes", "object_size", "object_box", "size_limit")

    def run(
        self, boxes: Boxes, image: np.ndarray, object_tags: Sequence[str], box_threshold: float, text_threshold: float
    ) -> dict[str, object]:
        from .detection import captions_for

        height, width = image.shape[:2]
        captions = captions_for(tuple(object_tags), self.caption_format, self.detector.fits) if object_tags else []
        found = self.detector.detect_captions(image, captions, box_threshold, text_threshold, self.phrase_rule) if captions else Boxes.empty()
        if self.clamp:
            found = found.clamped(height, width)
        box = object_box(found, self.iou_threshold)
        size = None if box is None else float(box.area_ratios(height, width)[0])
        limit = self.factor * (NO_OBJECT_SIZE if size is None else size)
        return {"boxes": filter_by_size(boxes, height, width, limit), "object_size": size, "object_box": box,
                "size_limit": limit}


def build_calibrated(detector: Detector, settings) -> SizeFilterStage:
    return SizeFilterStage()


def build_object_per_image(detector: Detector, settings) -> ObjectSizeFilterStage:
    from .detection import clamps_at_detection

    return ObjectSizeFilterStage(
        detector, settings.filtering.size_threshold, settings.filtering.nms_iou,
        settings.detection.caption_format, settings.detection.phrase_rule,
        clamps_at_detection(settings.detection.box_clamp),
    )


SIZE_RULES: Registry = Registry("size rule")  # name -> (detector, Config) -> size-filter stage
SIZE_RULES.register("calibrated")(build_calibrated)
SIZE_RULES.register("object-per-image")(build_object_per_image)
