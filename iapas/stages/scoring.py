"""Step 2-4: the anomaly map, sum over kept regions of confidence x mask, then one of two normalisations.

- `clip` (iapas recipe): clipped to [0, 1] where masks overlap; a box's score stays its value in the map.
- `minmax` (official recipe; test_zsas.py calls utils/function.py normalize on every image's map):
  (map - min) / (max - min) per image, and a constant map (no box, or one mask covering everything)
  becomes all zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..registry import Registry
from ..types import Boxes, Masks


def summed_map(masks: Masks, scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) float32 sum_i s_i * m_i, each mask added only inside its region (`Masks.bounding_regions`).

    Outside a mask's region the term is s_i * 0, which leaves the float32 sum unchanged, so the map equals
    the whole-image sum exactly; masks are added in order, one at a time (no (N, H, W) float copy).
    """
    if len(masks) != len(scores):
        raise ValueError(f"{len(masks)} masks but {len(scores)} scores")
    total = np.zeros((height, width), np.float32)
    if not len(masks):
        return total
    regions = masks.bounding_regions()
    for score, mask, (left, top, right, bottom) in zip(np.asarray(scores, np.float32), masks.data, regions):
        total[top:bottom, left:right] += score * mask[top:bottom, left:right]
    return total


def clip_unit(total: np.ndarray) -> np.ndarray:
    return np.clip(total, 0.0, 1.0, out=total)


def minmax_per_image(total: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes zeros (utils/function.py normalize)."""
    low, high = float(total.min()), float(total.max())
    if high == low:
        return np.zeros_like(total)
    return ((total - low) / (high - low)).astype(np.float32)


NORMALISATIONS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("map normalisation")
NORMALISATIONS.register("clip")(clip_unit)
NORMALISATIONS.register("minmax")(minmax_per_image)


def anomaly_map(masks: Masks, scores: np.ndarray, height: int, width: int, normalise: str = "clip") -> np.ndarray:
    """(H, W) float32 map: sum_i s_i * m_i, normalised by the named rule."""
    return NORMALISATIONS.get(normalise)(summed_map(masks, scores, height, width))


@dataclass
class ScoreStage:
    """Aggregates masks weighted by their box confidences into the anomaly map."""

    normalise: str = "clip"
    name: str = "scoring"
    inputs: tuple[str, ...] = ("image", "boxes", "masks")
    outputs: tuple[str, ...] = ("anomaly_map",)

    def run(self, image: np.ndarray, boxes: Boxes, masks: Masks) -> dict[str, np.ndarray]:
        return {"anomaly_map": anomaly_map(masks, boxes.scores, image.shape[0], image.shape[1], self.normalise)}
