"""Writing one image's result files, atomically, so an interrupted batch never leaves half a result.

Naming rule (collision-free and stable): an image's outputs are named by its path under the input folder
it was found in, file suffix included, with the folder layout kept: `sub/x.png` gives `sub/x.png.npy`,
`sub/x.png_map.png`, `sub/x.png_overlay.png` and `sub/x.png.json`, so `a.png` and `a.bmp`, or `sub/x.png`
and `sub__x.png`, never meet. A file named directly is named by its file name. Two inputs of one run that
still share a name (one relative path under two input folders, two named files with one name, or names
equal but for case) each get `~` and 8 hex digits of their absolute path's SHA-1 appended, which no image
name can end with.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..files import atomic_write
from ..types import Result
from ..visualization.decisions import decision_picture

OUTPUT_SUFFIXES = (".npy", "_map.png", "_overlay.png", ".json")  # the .json goes last: it marks completion
MASK_SUFFIX = "_mask.png"  # the binary defect mask, where the run decides pixels (iapas/decisions/)
THUMBNAILS = "thumbnails"  # small overlays for report.html, under the output folder
THUMBNAIL_SIDE = 192
DECISIONS_KEY = "decisions"  # the record's key holding the run's DecisionSettings


def output_name(image: Path, root: Path | None) -> str:
    """The image's path under its input folder (its file name when given directly), suffix kept, '/'-separated."""
    relative = image.relative_to(root) if root is not None else Path(image.name)
    return relative.as_posix()


def assign_names(inputs: list[tuple[Path, Path | None]]) -> list[tuple[Path, str]]:
    """A distinct output name per input image, following the module's naming rule."""
    names = [output_name(image, root) for image, root in inputs]
    counts = Counter(name.casefold() for name in names)  # equal but for case: one file on macOS or Windows
    assigned = []
    for (image, _), name in zip(inputs, names):
        if counts[name.casefold()] > 1:
            name = f"{name}~{hashlib.sha1(str(image.resolve()).encode('utf-8')).hexdigest()[:8]}"
        assigned.append((image, name))
    return assigned


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {suffix: Path(out_dir) / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES}


def is_done(out_dir: Path, name: str, fingerprint: str = "") -> bool:
    """A result counts as finished when every file exists, the JSON last, and was made under this fingerprint."""
    paths = output_paths(out_dir, name)
    if not all(path.exists() for path in paths.values()):
        return False
    try:
        record = json.loads(paths[".json"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("fingerprint", "") == fingerprint


def object_record(result: Result) -> dict[str, Any] | None:
    """What decided IAP-AS's size filter on this image: the object's tags, box and size, and the area limit applied."""
    if result.method != "iapas":
        return None
    box = result.object_box
    return {
        "tags": list(result.object_tags),
        "box": None if box is None else [float(v) for v in box.xyxy[0]],
        "score": None if box is None else float(box.scores[0]),
        "size": result.object_size,
        "size_limit": result.size_limit,
    }


def result_record(result: Result, image: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready summary of a Result, numbers at full float precision (a run can be checked against a reference)."""
    return {
        "image": str(image),
        "method": result.method,
        "height": result.height,
        "width": result.width,
        "image_score": result.image_score,
        "prompts": list(result.prompts),
        "object": object_record(result),
        "boxes": [
            {"xyxy": [float(v) for v in box], "score": float(score), "phrase": phrase, "mask_area": int(area)}
            for box, score, phrase, area in zip(
                result.boxes.xyxy, result.boxes.scores, result.boxes.phrases,
                result.masks.areas() if len(result.masks) == len(result.boxes) else [0] * len(result.boxes),
            )
        ],
        "timings_s": {name: round(seconds, 5) for name, seconds in result.timings.items()},
        **(extra or {}),
    }


def thumbnail_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / THUMBNAILS / f"{name}.jpg"


def write_decision_files(out_dir: Path, name: str, image_pixels: np.ndarray, result: Result, decision, settings,
                         paths: dict[str, Path]) -> None:
    """The binary mask (when pixels were decided), the overlay and its thumbnail of one decided image."""
    if decision.mask is not None:
        mask_png = np.where(decision.mask, 255, 0).astype(np.uint8)
        atomic_write(Path(out_dir) / f"{name}{MASK_SUFFIX}", lambda p: Image.fromarray(mask_png).save(p, format="PNG"))
    picture = decision_picture(image_pixels, result.anomaly_map, result.boxes, decision.verdict, decision.image_score,
                               decision.mask, decision.regions, decision.pixel_threshold)
    atomic_write(paths["_overlay.png"], lambda p: Image.fromarray(picture).save(p, format="PNG"))
    small = Image.fromarray(picture)
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    atomic_write(thumbnail_path(out_dir, name), lambda p: small.save(p, format="JPEG", quality=80))


def write_result(out_dir: Path, name: str, image_pixels: np.ndarray, image: Path, result: Result,
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the score map (.npy, 8-bit .png), the decision overlay, the mask and the JSON for one image,
    then append its summary.csv row (iapas/decisions/: the run's settings travel in `extra["decisions"]`)."""
    from ..decisions.decide import DecisionSettings, decide
    from ..decisions.regions import load_roi
    from ..decisions.summary import append_row

    paths = output_paths(Path(out_dir), name)
    paths[".json"].parent.mkdir(parents=True, exist_ok=True)
    score_png = np.round(result.anomaly_map * 255).astype(np.uint8)
    atomic_write(paths[".npy"], lambda p: np.save(p, result.anomaly_map))
    atomic_write(paths["_map.png"], lambda p: Image.fromarray(score_png).save(p, format="PNG"))
    settings = DecisionSettings.from_dict((extra or {}).get(DECISIONS_KEY) or {})
    roi = load_roi(settings.roi, result.height, result.width) if settings.roi else None
    decision = decide(result, settings, roi)
    write_decision_files(Path(out_dir), name, image_pixels, result, decision, settings, paths)
    record = {**result_record(result, image, extra), **decision.record(settings)}
    atomic_write(paths[".json"], lambda p: p.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))
    append_row(Path(out_dir), name, record)
    return paths
