"""Step 1-2: the size threshold S_threshold from Grounding DINO boxes of the object tags.

Rule: on each calibration image, detect the object tags at the kind's thresholds and take the
largest box as a fraction of the image area; the object size is the largest such fraction over
all images, and S_threshold = min(object size, cap) with the paper's cap of 0.8. A box at least as
large as the object itself is the object, not a defect on it, and the cap removes boxes that
cover nearly the whole image when the object fills the frame (textures). With no tags, or no box
found, S_threshold is the cap alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import Detector


def size_threshold_from_ratios(ratios: Sequence[float], cap: float) -> tuple[float, float | None]:
    """(S_threshold, object size) from each image's largest-box area ratio."""
    object_size = max(ratios) if len(ratios) else None
    return (cap if object_size is None else min(object_size, cap)), object_size


@dataclass
class SizeThresholdStage:
    """Detects the tagged objects and turns their largest box into S_threshold."""

    detector: Detector
    box_threshold: float
    text_threshold: float
    cap: float
    name: str = "size_threshold"
    inputs: tuple[str, ...] = ("calibration_images", "tags")
    outputs: tuple[str, ...] = ("size_threshold", "object_size")

    def run(self, calibration_images: Sequence[np.ndarray], tags: tuple[str, ...]) -> dict[str, float | None]:
        ratios = []
        for image in calibration_images if tags else ():
            # cut to the image: the object size is the share of the image a box covers (detectors give boxes as predicted)
            boxes = self.detector.detect(image, tags, self.box_threshold, self.text_threshold).clamped(*image.shape[:2])
            if len(boxes):
                ratios.append(float(boxes.area_ratios(*image.shape[:2]).max()))
        threshold, object_size = size_threshold_from_ratios(ratios, self.cap)
        return {"size_threshold": threshold, "object_size": object_size}
