"""Step 2-2: non-maximum suppression and the size filter of Eq. (3)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import nms as torchvision_nms

from ..types import Boxes


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
