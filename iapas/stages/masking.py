"""Step 2-3: SAM turns every kept box into a mask, all boxes in one batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.base import Segmenter
from ..types import Boxes, Masks


@dataclass
class MaskStage:
    """Encodes the image once and decodes all boxes together; no boxes means no SAM call.

    Boxes are cut to the image first (utils/function.py process_anomaly_segmentation clamps just before SAM),
    and the cut boxes are the ones passed on: they are what the masks were made from.
    """

    segmenter: Segmenter
    name: str = "masking"
    inputs: tuple[str, ...] = ("image", "boxes")
    outputs: tuple[str, ...] = ("masks", "boxes")

    def run(self, image: np.ndarray, boxes: Boxes) -> dict[str, Any]:
        height, width = image.shape[:2]
        if len(boxes) == 0:
            return {"masks": Masks.empty(height, width), "boxes": boxes}
        boxes = boxes.clamped(height, width)
        # SAM backends give region-bounded masks (iapas/acceleration/mask_upsampling.py); any other segmenter its plain array
        segment_masks = getattr(self.segmenter, "segment_masks", None)
        if segment_masks is not None:
            return {"masks": segment_masks(image, boxes.xyxy), "boxes": boxes}
        return {"masks": Masks(self.segmenter.segment_boxes(image, boxes.xyxy)), "boxes": boxes}

    def run_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`run` on several images: the images with boxes are encoded in one forward, then each decodes its own boxes.

        A segmenter without `encode_batch` gets the images one by one, with the same results.
        """
        encode = getattr(self.segmenter, "encode_batch", None)
        busy = [index for index, item in enumerate(items) if len(item["boxes"])]
        if encode is None or len(busy) < 2:
            return [self.run(**item) for item in items]
        encodings = dict(zip(busy, encode([items[i]["image"] for i in busy])))
        results = []
        for index, item in enumerate(items):
            if index not in encodings:
                results.append(self.run(**item))
                continue
            # the regions come along, so scoring adds each mask only where it can be positive (as `run` does)
            boxes = item["boxes"].clamped(*item["image"].shape[:2])
            masks = self.segmenter.segment_masks_encoded(item["image"], encodings[index], boxes.xyxy)
            results.append({"masks": masks, "boxes": boxes})
        return results
