"""Step 2-3: SAM turns every kept box into a mask, all boxes in one batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Segmenter
from ..types import Boxes, Masks


@dataclass
class MaskStage:
    """Encodes the image once and decodes all boxes together; no boxes means no SAM call."""

    segmenter: Segmenter
    name: str = "masking"
    inputs: tuple[str, ...] = ("image", "boxes")
    outputs: tuple[str, ...] = ("masks",)

    def run(self, image: np.ndarray, boxes: Boxes) -> dict[str, Masks]:
        height, width = image.shape[:2]
        if len(boxes) == 0:
            return {"masks": Masks.empty(height, width)}
        # SAM backends give region-bounded masks (iapas/mask_upsampling.py); any other segmenter its plain array
        segment_masks = getattr(self.segmenter, "segment_masks", None)
        if segment_masks is not None:
            return {"masks": segment_masks(image, boxes.xyxy)}
        return {"masks": Masks(self.segmenter.segment_boxes(image, boxes.xyxy))}
