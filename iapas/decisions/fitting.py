"""Scoring a folder of known-good images for the normal-images threshold rule (`iapas threshold`, `iapas calibrate`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..errors import DecisionError
from .decide import masked_map
from .regions import file_sha256, load_roi
from .thresholds import NormalImagesRule
from .thresholds_file import ThresholdsFile


def normal_scores(segment: Callable, images: Sequence[Path], batch_size: int = 1, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                  bit_window: Any = None, roi_path: str | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image scores, map maxima) of the images, as `segment` would decide them (inside the ROI when given).

    Any image that cannot be read or segmented stops the fit with its one-line error: a threshold fitted
    on fewer images than the user gave would not be the one they asked for.
    """
    from ..images import load_image
    from ..runs.batch import segment_each

    scores, maxima = [], []
    with tqdm(total=len(images), desc="threshold", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for first in range(0, len(images), batch_size):
            chunk = images[first:first + batch_size]
            pixels = [load_image(path, max_pixels, bit_window).pixels for path in chunk]
            for path, outcome in zip(chunk, segment_each(segment, pixels)):
                if isinstance(outcome, Exception):
                    raise outcome
                roi = load_roi(roi_path, outcome.height, outcome.width) if roi_path else None
                values = masked_map(outcome.anomaly_map, roi)
                scores.append(outcome.image_score if roi is None else float(values.max()))
                maxima.append(float(values.max()))
                bar.update(1)
    return np.array(scores, np.float64), np.array(maxima, np.float64)


def fit_normal_thresholds(segment: Callable, normal_dir: str | Path, identity: dict, rule: NormalImagesRule,
                          batch_size: int = 1, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, bit_window: Any = None,
                          roi_path: str | None = None, progress: bool = True) -> ThresholdsFile:
    """A thresholds file fitted on every image of `normal_dir` with the normal-images rule."""
    from ..images import find_images

    folder = Path(normal_dir)
    if not folder.is_dir():
        raise DecisionError(f"normal-image folder not found: {folder}")
    images = find_images(folder)
    rule.check_count(len(images))  # before any image is segmented
    scores, maxima = normal_scores(segment, images, batch_size, max_pixels, bit_window, roi_path, progress)
    image, pixel = rule.fit(scores, maxima)
    fitted = {"rule": "normal-images", "folder": str(folder.resolve()), "images": len(images),
              "roi_sha256": file_sha256(roi_path) if roi_path else None,
              "image_scores": [round(float(s), 6) for s in scores]}
    return ThresholdsFile(identity, image, pixel, fitted)
