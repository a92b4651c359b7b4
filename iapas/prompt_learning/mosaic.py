"""Four-image mosaic augmentation for training on an auxiliary dataset (AdaCLIP, after April-GAN)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

MOSAIC_TILES = 4  # a 2 x 2 grid (caoyunkang/AdaCLIP dataset/base_dataset.py `combine_img`)


def mosaic(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One (2H, 2W) image and mask from four, in reading order, on the first image's tile size.

    As PIL's `paste` in caoyunkang/AdaCLIP dataset/base_dataset.py: each image is placed at the corner of
    its tile; a larger one is cut off by the tiles after it and the canvas, a smaller one leaves black.
    """
    if len(images) != MOSAIC_TILES or len(masks) != MOSAIC_TILES:
        raise ValueError(f"a mosaic needs {MOSAIC_TILES} images and masks")
    height, width = images[0].shape[:2]
    canvas = np.zeros((2 * height, 2 * width, 3), np.uint8)
    mask_canvas = np.zeros((2 * height, 2 * width), bool)
    for index, (image, mask) in enumerate(zip(images, masks)):
        top, left = (index // 2) * height, (index % 2) * width
        h, w = min(image.shape[0], 2 * height - top), min(image.shape[1], 2 * width - left)
        canvas[top:top + h, left:left + w] = image[:h, :w]
        mask_canvas[top:top + h, left:left + w] = mask[:h, :w]
    return canvas, mask_canvas
