"""Procedural anomaly data in the MVTec AD layout, with exact masks and a seed.

Textures and simple objects are drawn from noise and shapes; defects (scratch, hole, stain,
crack, missing part) are pasted with the mask of exactly the pixels they changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

Canvas = np.ndarray  # (H, W, 3) uint8
Mask = np.ndarray  # (H, W) bool


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Value noise in [0, 1] with features about `scale` pixels wide."""
    coarse = rng.random((max(2, size // scale), max(2, size // scale))).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def texture_tile(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    """A speckled stone-like tile; the whole image is the surface."""
    base = 0.55 * _smooth_noise(rng, size, 32) + 0.3 * _smooth_noise(rng, size, 6) + 0.15 * rng.random((size, size))
    grey = (90 + 110 * base).astype(np.uint8)
    tint = np.array([1.0, 0.97, 0.92])
    return np.clip(grey[:, :, None] * tint, 0, 255).astype(np.uint8), np.ones((size, size), bool)


def texture_fabric(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    """A woven fabric: crossing sinusoidal threads with jitter."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 8)
    weave = 0.5 + 0.25 * np.sin(2 * np.pi * x / period) + 0.25 * np.sin(2 * np.pi * y / period)
    weave = 0.8 * weave + 0.2 * _smooth_noise(rng, size, 4)
    colour = rng.uniform(0.4, 1.0, 3)
    return np.clip(weave[:, :, None] * colour * 230, 0, 255).astype(np.uint8), np.ones((size, size), bool)


def object_disc(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    """A metal washer on a dark background; its pixels are the object."""
    canvas = np.full((size, size, 3), 30, np.uint8)
    canvas = np.clip(canvas + 10 * _smooth_noise(rng, size, 16)[:, :, None], 0, 255).astype(np.uint8)
    centre = (size // 2 + int(rng.integers(-8, 9)), size // 2 + int(rng.integers(-8, 9)))
    outer, inner = int(size * 0.36), int(size * 0.12)
    body = np.zeros((size, size), np.uint8)
    cv2.circle(body, centre, outer, 1, -1)
    cv2.circle(body, centre, inner, 0, -1)
    metal = (150 + 60 * _smooth_noise(rng, size, 20)).astype(np.uint8)
    canvas[body.astype(bool)] = np.stack([metal] * 3, axis=2)[body.astype(bool)]
    return canvas, body.astype(bool)


def object_plate(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    """A green circuit-board-like plate with copper pads."""
    canvas = np.full((size, size, 3), 220, np.uint8)
    margin = int(size * 0.15)
    body = np.zeros((size, size), bool)
    body[margin:-margin, margin:-margin] = True
    canvas[body] = (30, 110, 50)
    for _ in range(6):
        cx, cy = rng.integers(margin + 10, size - margin - 10, 2)
        cv2.rectangle(canvas, (int(cx) - 5, int(cy) - 3), (int(cx) + 5, int(cy) + 3), (200, 140, 60), -1)
    return canvas, body


def _random_point(rng: np.random.Generator, surface: Mask) -> tuple[int, int]:
    ys, xs = np.nonzero(surface)
    index = int(rng.integers(len(xs)))
    return int(xs[index]), int(ys[index])


def defect_scratch(rng, canvas, surface):
    """A thin bright or dark line."""
    layer = np.zeros(surface.shape, np.uint8)
    x0, y0 = _random_point(rng, surface)
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.35) * surface.shape[0]
    x1, y1 = int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle))
    cv2.line(layer, (x0, y0), (x1, y1), 1, int(rng.integers(1, 3)))
    mask = layer.astype(bool) & surface
    canvas[mask] = 245 if rng.random() < 0.5 else 20
    return mask


def defect_hole(rng, canvas, surface):
    """A dark ellipse."""
    layer = np.zeros(surface.shape, np.uint8)
    centre = _random_point(rng, surface)
    axes = tuple(int(a) for a in rng.integers(4, max(6, surface.shape[0] // 14), 2))
    cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask = layer.astype(bool) & surface
    canvas[mask] = (10, 10, 10)
    return mask


def defect_stain(rng, canvas, surface):
    """A brownish blob blended into the surface."""
    size = surface.shape[0]
    cx, cy = _random_point(rng, surface)
    y, x = np.mgrid[0:size, 0:size]
    radius = rng.uniform(0.04, 0.09) * size
    blob = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius ** 2))) * (0.7 + 0.6 * _smooth_noise(rng, size, 8))
    mask = (blob > 0.35) & surface
    colour = np.array([120, 70, 20], np.float32)
    alpha = np.clip(blob, 0, 0.85)[:, :, None]
    stained = canvas.astype(np.float32) * (1 - alpha) + colour * alpha
    canvas[mask] = stained[mask].astype(np.uint8)
    return mask


def defect_crack(rng, canvas, surface):
    """A jagged dark random-walk line."""
    layer = np.zeros(surface.shape, np.uint8)
    x, y = _random_point(rng, surface)
    heading = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    for _ in range(int(rng.integers(8, 16))):
        heading += rng.normal(0, 0.6)
        x, y = int(x + 5 * np.cos(heading)), int(y + 5 * np.sin(heading))
        points.append((x, y))
    cv2.polylines(layer, [np.array(points, np.int32)], False, 1, 2)
    mask = layer.astype(bool) & surface
    canvas[mask] = (25, 20, 20)
    return mask


def defect_missing(rng, canvas, surface, background: int = 30):
    """A chunk of the object cut away to background (objects only)."""
    layer = np.zeros(surface.shape, np.uint8)
    centre = _random_point(rng, surface)
    cv2.circle(layer, centre, int(surface.shape[0] * rng.uniform(0.05, 0.09)), 1, -1)
    mask = layer.astype(bool) & surface
    canvas[mask] = background
    return mask


SURFACES: dict[str, tuple[str, Callable]] = {
    "tile": ("texture", texture_tile),
    "fabric": ("texture", texture_fabric),
    "washer": ("object", object_disc),
    "board": ("object", object_plate),
}
DEFECTS: dict[str, Callable] = {
    "scratch": defect_scratch,
    "hole": defect_hole,
    "stain": defect_stain,
    "crack": defect_crack,
    "missing": defect_missing,
}


@dataclass(frozen=True)
class SynthSpec:
    """How much synthetic data to write."""

    categories: tuple[str, ...] = ("tile", "fabric", "washer", "board")
    defects: tuple[str, ...] = ("scratch", "hole", "stain", "crack")
    train_good: int = 4
    test_good: int = 2
    per_defect: int = 2
    size: int = 256
    seed: int = 111


def synth_sample(category: str, defect: str | None, rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    """One image of `category` with `defect` pasted (None: a normal image) and its exact mask."""
    _, draw = SURFACES[category]
    canvas, surface = draw(rng, size)
    if defect is None:
        return canvas, np.zeros(surface.shape, bool)
    mask = DEFECTS[defect](rng, canvas, surface)
    if not mask.any():  # a defect clipped away entirely would make a "defective" image without a defect
        return synth_sample(category, defect, rng, size)
    return canvas, mask


def write_synth_dataset(root: str | Path, spec: SynthSpec = SynthSpec()) -> Path:
    """Write an MVTec-layout dataset: <cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth/<defect>."""
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    for category in spec.categories:
        base = root / category
        for split, count in (("train", spec.train_good), ("test", spec.test_good)):
            folder = base / split / "good"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image, _ = synth_sample(category, None, rng, spec.size)
                Image.fromarray(image).save(folder / f"{index:03d}.png")
        for defect in spec.defects:
            if defect == "missing" and SURFACES[category][0] == "texture":
                continue
            images, masks = base / "test" / defect, base / "ground_truth" / defect
            images.mkdir(parents=True, exist_ok=True)
            masks.mkdir(parents=True, exist_ok=True)
            for index in range(spec.per_defect):
                image, mask = synth_sample(category, defect, rng, spec.size)
                Image.fromarray(image).save(images / f"{index:03d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{index:03d}_mask.png")
    return root
