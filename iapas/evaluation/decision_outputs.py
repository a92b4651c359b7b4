"""What `iapas eval` adds for decisions: per-image scores, image ROC and PR curves, F1-optimal thresholds
(image and pixel, with the precision and recall there) and a thresholds file `segment` reads directly.

Thresholds are fitted on the maps and image scores as `iapas segment` makes them, at each image's own
resolution and on the [0, 1] map scale: never on the paper protocol's 400x400 resized, per-category
min-max normalised maps, whose scale depends on the other images of the category and so would not carry
over to a segment run. Under the paper protocol a separate streaming accumulator sees the raw maps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DecisionError


def fit_category_thresholds(labels: Sequence[int], scores: Sequence[float], pixels: Any) -> dict[str, Any]:
    """{"image": Threshold dict | None, "pixel": ... | None, "note": why one is missing} for one category."""
    from ..decisions.thresholds import f1_optimal, f1_optimal_from_counts

    fitted: dict[str, Any] = {"image": None, "pixel": None, "notes": []}
    try:
        fitted["image"] = f1_optimal(np.asarray(labels), np.asarray(scores)).to_dict()
    except DecisionError as error:
        fitted["notes"].append(f"image: {error}")
    if pixels is None:
        fitted["notes"].append("pixel: the maps leave [0, 1], the scale thresholds live on")
        return fitted
    try:
        tp, fp = pixels.counts()
        fitted["pixel"] = f1_optimal_from_counts(tp, fp, pixels.thresholds(), float(pixels.positive.sum())).to_dict()
    except DecisionError as error:
        fitted["notes"].append(f"pixel: {error}")
    return fitted


def write_category_thresholds(path: Path, identity: dict, fitted: dict[str, Any], category: str, images: int,
                              per_image_normalised: bool) -> Path | None:
    """The category's thresholds file for `segment --thresholds` (None when nothing could be fitted).

    A recipe whose maps are min-max normalised per image keeps the pixel threshold only: its image scores
    are 1.0 wherever a box was kept, so an image threshold means nothing there.
    """
    from ..decisions.thresholds import Threshold
    from ..decisions.thresholds_file import ThresholdsFile

    image = Threshold.from_dict(fitted["image"], "image") if fitted["image"] and not per_image_normalised else None
    pixel = Threshold.from_dict(fitted["pixel"], "pixel") if fitted["pixel"] else None
    if per_image_normalised and fitted["image"]:
        fitted["notes"].append("image: not written: the recipe min-max normalises every map per image")
    if image is None and pixel is None:
        return None
    return ThresholdsFile(identity, image, pixel, {"rule": "f1-optimal", "category": category, "images": images}).save(path)


def write_image_curves(labels: Sequence[int], scores: Sequence[float], path: Path, title: str,
                       threshold: dict[str, Any] | None) -> None:
    """Image-level ROC and precision-recall curves side by side, the F1-optimal point marked, as a PNG."""
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels, scores = np.asarray(labels, int), np.asarray(scores, np.float64)
    if len(np.unique(labels)) < 2:
        return
    figure = Figure(figsize=(9, 4.2), dpi=110)
    roc_axes, pr_axes = figure.subplots(1, 2)
    fpr, tpr, _ = roc_curve(labels, scores)
    roc_axes.plot(fpr, tpr)
    roc_axes.plot([0, 1], [0, 1], ":", color="grey")
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="image ROC", xlim=(0, 1), ylim=(0, 1.02))
    precision, recall, _ = precision_recall_curve(labels, scores)
    pr_axes.step(recall, precision, where="post")
    pr_axes.set(xlabel="recall", ylabel="precision", title="image PR", xlim=(0, 1), ylim=(0, 1.02))
    if threshold:
        flagged = scores > threshold["value"]
        roc_axes.plot(np.mean(flagged[labels == 0]), np.mean(flagged[labels == 1]), "o", color="crimson",
                      label=f"F1-optimal, threshold {threshold['value']:.4f}")
        pr_axes.plot(threshold["rule"]["recall"], threshold["rule"]["precision"], "o", color="crimson",
                     label=f"F1 {threshold['rule']['f1']:.3f}")
        roc_axes.legend(loc="lower right")
        pr_axes.legend(loc="lower left")
    for axes in (roc_axes, pr_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


IMAGE_SCORE_COLUMNS = ("category", "image", "label", "score", "segment_score")


def write_image_scores(records: Sequence[dict], path: Path) -> Path:
    """image_scores.csv: every evaluated image's label, the protocol's image score and the score `segment` gives it."""
    from ..files import atomic_write_text
    from ..decisions.summary import csv_text

    rows = [list(IMAGE_SCORE_COLUMNS)]
    for record in records:
        for entry in record.get("image_scores") or []:
            rows.append([record["category"], entry["image"], str(entry["label"]), repr(float(entry["score"])),
                         repr(float(entry["segment_score"]))])  # exact: a threshold can be checked against them
    return atomic_write_text(path, csv_text(rows))


def thresholds_table(records: Sequence[dict]) -> str:
    """thresholds.md: the F1-optimal thresholds per category with precision and recall there."""
    lines = ["| category | image threshold | image P | image R | image F1 | pixel threshold | pixel P | pixel R | pixel F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        fitted = record.get("thresholds") or {}
        cells = []
        for level in ("image", "pixel"):
            found = fitted.get(level)
            cells += ([f"{found['value']:.4f}", *(f"{100 * found['rule'][k]:.2f}" for k in ("precision", "recall", "f1"))]
                      if found else ["-"] * 4)
        lines.append(f"| {record['category']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

