"""Writing one image's result files, atomically, so an interrupted batch never leaves half a result."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .files import atomic_write
from .types import Result
from .viz import result_overlay

OUTPUT_SUFFIXES = (".npy", "_map.png", "_overlay.png", ".json")  # the .json goes last: it marks completion


def output_stem(image: Path, root: Path | None) -> str:
    """A flat, unique file stem: the image's path under its input folder, separators as "__"."""
    relative = image.relative_to(root) if root is not None else Path(image.name)
    return "__".join(relative.with_suffix("").parts)


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    return {suffix: Path(out_dir) / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES}


def is_done(out_dir: Path, stem: str) -> bool:
    """A result counts as finished only when every file, the JSON last, exists."""
    return all(path.exists() for path in output_paths(out_dir, stem).values())


def result_record(result: Result, image: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready summary of a Result."""
    return {
        "image": str(image),
        "method": result.method,
        "height": result.height,
        "width": result.width,
        "image_score": result.image_score,
        "prompts": list(result.prompts),
        "boxes": [
            {"xyxy": [round(float(v), 2) for v in box], "score": round(float(score), 4), "phrase": phrase,
             "mask_area": int(area)}
            for box, score, phrase, area in zip(
                result.boxes.xyxy, result.boxes.scores, result.boxes.phrases,
                result.masks.areas() if len(result.masks) == len(result.boxes) else [0] * len(result.boxes),
            )
        ],
        "timings_s": {name: round(seconds, 5) for name, seconds in result.timings.items()},
        **(extra or {}),
    }


def write_result(out_dir: Path, stem: str, image_pixels: np.ndarray, image: Path, result: Result,
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the score map (.npy, 8-bit .png), the overlay and the JSON for one image."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, stem)
    score_png = np.round(result.anomaly_map * 255).astype(np.uint8)
    atomic_write(paths[".npy"], lambda p: np.save(p, result.anomaly_map))
    atomic_write(paths["_map.png"], lambda p: Image.fromarray(score_png).save(p, format="PNG"))
    picture = result_overlay(image_pixels, result.anomaly_map, result.boxes)
    atomic_write(paths["_overlay.png"], lambda p: Image.fromarray(picture).save(p, format="PNG"))
    record = result_record(result, image, extra)
    atomic_write(paths[".json"], lambda p: p.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))
    return paths
