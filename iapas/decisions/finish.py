"""The end of a segment run: MEBin per folder (when asked), then summary.csv and report.html rebuilt.

MEBin sets its search range from a set of maps, so it runs once a folder's maps all exist: per output
sub-folder (one input folder, or one category's), as AnomalyNCD binarises each product's maps together.
Maps are read twice from their .npy files (their peaks, then one at a time), so no folder is held in memory.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..types import Boxes, Result, Masks
from .decide import DecisionSettings, decide_map, masked_map
from .mebin import MEBin, range_of_peaks
from .regions import load_roi
from .report import write_report
from .summary import rebuild_summary, result_records


def record_boxes(record: dict[str, Any]) -> Boxes:
    """The detected boxes a result record lists (IAP-AS), for the phrases of regions."""
    boxes = record.get("boxes") or []
    if not boxes:
        return Boxes.empty()
    return Boxes(np.array([b["xyxy"] for b in boxes], np.float32), np.array([b["score"] for b in boxes], np.float32),
                 tuple(b.get("phrase", "") for b in boxes))


def picture_of(record: dict[str, Any], anomaly_map: np.ndarray) -> np.ndarray:
    """The image a record was made from, or a grey picture of the map's size when it can no longer be read."""
    from ..images import load_image

    try:
        pixels = load_image(Path(record["image"])).pixels
        if pixels.shape[:2] == anomaly_map.shape:
            return pixels
    except Exception:  # noqa: BLE001 - the picture is only a background; the decision stands without it
        pass
    return np.full((*anomaly_map.shape, 3), 128, np.uint8)


def mebin_folders(out_dir: Path, settings: DecisionSettings, fingerprint: str | None = None,
                  mebin: MEBin = MEBin()) -> int:
    """Binarise every finished result with MEBin, one search range per output sub-folder; returns the images done."""
    from ..files import atomic_write
    from ..runs.outputs import output_paths, write_decision_files

    out_dir = Path(out_dir)
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for name, record in result_records(out_dir, fingerprint):
        groups[str(Path(name).parent)].append((name, record))
    done = 0
    for entries in groups.values():
        rois: dict[tuple[int, int], np.ndarray] = {}

        def roi_for(shape: tuple[int, int]) -> np.ndarray | None:
            if settings.roi and shape not in rois:
                rois[shape] = load_roi(settings.roi, *shape)
            return rois.get(shape)

        def load(name: str) -> np.ndarray:
            values = np.load(out_dir / f"{name}.npy")
            return masked_map(values, roi_for(values.shape))

        low, high = range_of_peaks([float(load(name).max()) for name, _ in entries])
        for name, record in entries:
            anomaly_map = load(name)
            outcome = mebin.binarize_one(anomaly_map, low, high)
            here = settings.with_pixel_threshold(outcome.threshold, "mebin")
            roi = roi_for(anomaly_map.shape)
            score = None if roi is not None else float(record.get("image_score", anomaly_map.max()))
            boxes = record_boxes(record)
            decision = decide_map(anomaly_map, score, here, roi, outcome.mask, boxes)
            result = Result(anomaly_map, boxes, Masks.empty(*anomaly_map.shape), tuple(record.get("prompts") or ()))
            paths = output_paths(out_dir, name)
            write_decision_files(out_dir, name, picture_of(record, anomaly_map), result, decision, here, paths)
            updated = {**record, **decision.record(here)}
            updated["thresholds"]["mebin"] = {**mebin.to_dict(), "search_range_8bit": [low, high],
                                              "stable_regions": outcome.regions}
            atomic_write(paths[".json"], lambda p: p.write_text(json.dumps(updated, indent=2) + "\n", encoding="utf-8"))
            done += 1
    return done


def finish_run(out_dir: Path, fingerprint: str | None, settings: DecisionSettings,
               failures: Sequence[tuple[Any, str]] = (), title: str = "iapas segment") -> None:
    """MEBin per folder (when the run binarises with it), then summary.csv and report.html from the records."""
    if settings.binarize == "mebin":
        mebin_folders(out_dir, settings, fingerprint)
    rebuild_summary(out_dir, fingerprint)
    write_report(out_dir, fingerprint, [(str(image), message) for image, message in failures], title)
