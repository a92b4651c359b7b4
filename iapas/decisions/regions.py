"""Regions of interest, minimum defect area and the defect regions of a binary mask.

Regions are 8-connected (pixels touching at a corner are one defect), as the ground-truth regions of
`iapas/evaluation/metrics.py` are (MVTec AD's evaluation, anomalib, AnomalyCLIP).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import DecisionError
from ..evaluation.metrics import REGION_CONNECTIVITY
from ..types import Boxes


@dataclass(frozen=True)
class Region:
    """One connected defect region: its size, box (x0 y0 x1 y1, half-open pixels), scores and the phrase that found it."""

    area_px: int
    area_fraction: float
    box: tuple[int, int, int, int]
    peak_score: float
    mean_score: float
    phrase: str = ""  # IAP-AS: the prompt phrase of the detected box that covers it most; "" for the CLIP methods

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["box"] = list(self.box)
        record["area_fraction"] = round(self.area_fraction, 6)
        record["peak_score"], record["mean_score"] = round(self.peak_score, 6), round(self.mean_score, 6)
        return record


def parse_area(text: str | float) -> float:
    """A minimum defect area: pixels when 1 or more, a fraction of the image when below 1 (`50`, `0.001`, `0.1%`)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DecisionError(f"minimum defect area must be pixels (e.g. 50) or a fraction of the image "
                            f"(e.g. 0.001 or 0.1%), got {text!r}") from None
    if not (value >= 0 and np.isfinite(value)) or (raw.endswith("%") and value >= 1):
        raise DecisionError(f"minimum defect area must be 0 or more pixels, or a fraction below 1, got {text!r}")
    if value >= 1 and value != int(value):
        raise DecisionError(f"minimum defect area in pixels must be a whole number, got {text!r}")
    return value


def min_area_pixels(min_area: float, height: int, width: int) -> int:
    """The minimum area in pixels of an image of this size (`parse_area`'s rule: a fraction when below 1)."""
    if min_area >= 1:
        return int(min_area)
    return int(np.ceil(min_area * height * width))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_roi(path: str | Path, height: int, width: int) -> np.ndarray:
    """(H, W) bool region of interest from a PNG: non-zero pixels are inspected, zero pixels ignored."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DecisionError(f"region-of-interest mask not found: {path}")
    try:
        with Image.open(path) as picture:
            mask = np.asarray(picture.convert("L")) > 0
    except (OSError, UnidentifiedImageError) as error:
        raise DecisionError(f"cannot read region-of-interest mask {path}: {error}") from None
    if mask.shape != (height, width):
        raise DecisionError(f"region-of-interest mask {path} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                            f"{width}x{height}; draw the mask at the images' size")
    if not mask.any():
        raise DecisionError(f"region-of-interest mask {path} is all zero: nothing would be inspected")
    return mask


def box_phrase(region: np.ndarray, slices: tuple[slice, slice], boxes: Boxes) -> str:
    """The phrase of the box whose score x covered region pixels is largest ("" without boxes).

    `region` is the region's bool mask within `slices`, the region's bounding slices of the image.
    """
    if len(boxes) == 0:
        return ""
    rows, cols = np.nonzero(region)
    rows, cols = rows + slices[0].start, cols + slices[1].start
    best, phrase = 0.0, ""
    for (x0, y0, x1, y1), score, name in zip(boxes.xyxy, boxes.scores, boxes.phrases):
        covered = int(np.count_nonzero((cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)))
        if covered * float(score) > best:
            best, phrase = covered * float(score), name
    return phrase


def defect_regions(binary: np.ndarray, anomaly_map: np.ndarray, min_area_px: int = 0,
                   boxes: Boxes | None = None) -> tuple[np.ndarray, list[Region]]:
    """The mask without regions under `min_area_px`, and its 8-connected regions, highest peak first."""
    binary = np.asarray(binary, bool)
    labels, count = ndimage.label(binary, structure=REGION_CONNECTIVITY)
    kept = np.zeros_like(binary)
    regions: list[Region] = []
    total = binary.size
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None:
            continue
        region = labels[slices] == index
        area = int(region.sum())
        if area < max(1, min_area_px):
            continue
        kept[slices] |= region
        values = anomaly_map[slices][region]
        phrase = box_phrase(region, slices, boxes) if boxes is not None else ""
        regions.append(Region(area, area / total, (slices[1].start, slices[0].start, slices[1].stop, slices[0].stop),
                              float(values.max()), float(values.mean()), phrase))
    regions.sort(key=lambda r: (-r.peak_score, r.box))
    return kept, regions
