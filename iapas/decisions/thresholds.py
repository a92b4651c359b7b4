"""Operating thresholds: from normal images only, F1-optimal on a labelled set, or by hand.

Every threshold is on the scale of the maps `iapas segment` writes ([0, 1]; `docs/decisions.md` says
what a value means per method), and a score strictly above it is anomalous (`score > threshold`): so a
threshold of 0 flags any positive score and never an empty IAP-AS map, and the highest normal score
itself stays normal. The F1-optimal threshold is placed halfway between the lowest score it flags and
the next lower score, so `>` gives exactly the partition of the best point on the precision-recall curve.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import DecisionError

MIN_NORMAL_IMAGES = 10  # below this the spread of the normal scores is too uncertain to set a margin with
DEFAULT_MARGIN_SD = 1.0  # the margin over the highest normal score, in standard deviations of the normal scores
SOURCES = ("normal-images", "f1-optimal", "manual", "mebin")


@dataclass(frozen=True)
class Threshold:
    """One threshold, where it came from, and the rule's parameters and the measures at it (JSON-ready)."""

    value: float
    source: str  # one of SOURCES
    rule: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, what: str) -> "Threshold":
        if not isinstance(data, dict) or "value" not in data or "source" not in data:
            raise DecisionError(f"{what} needs a 'value' and a 'source'")
        value = data["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DecisionError(f"{what} value must be a finite number, got {value!r}")
        if data["source"] not in SOURCES:
            raise DecisionError(f"{what} source must be one of {', '.join(SOURCES)}, got {data['source']!r}")
        return cls(float(value), str(data["source"]), dict(data.get("rule") or {}))


@dataclass(frozen=True)
class NormalImagesRule:
    """Thresholds from known-good images only: the highest normal score plus a margin in units of their spread.

    image threshold = max(s) + image_margin_sd * sd(s) over the normal images' image scores s;
    pixel threshold = max(m) + pixel_margin_sd * sd(m) over their maps' maxima m (inside the ROI).
    sd is the sample standard deviation (n - 1). With a margin above 0 no normal image of the fitting set
    is judged anomalous, and the margin grows with how much normal parts vary. The maximum is used rather
    than a quantile because it means something with ten images, where a 99th percentile does not.
    """

    image_margin_sd: float = DEFAULT_MARGIN_SD
    pixel_margin_sd: float = DEFAULT_MARGIN_SD
    min_images: int = MIN_NORMAL_IMAGES

    def __post_init__(self) -> None:
        for name in ("image_margin_sd", "pixel_margin_sd"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise DecisionError(f"{name.replace('_', ' ')} must be a number of 0 or more, got {value!r}")
        if self.min_images < MIN_NORMAL_IMAGES:
            raise DecisionError(f"the normal-images rule needs at least {MIN_NORMAL_IMAGES} images; "
                                f"a minimum of {self.min_images} is too few")

    def check_count(self, count: int) -> None:
        if count < self.min_images:
            raise DecisionError(f"the normal-images threshold rule needs at least {self.min_images} normal images "
                                f"(max + margin x sd of their scores), got {count}")

    def fit(self, image_scores: np.ndarray, map_maxima: np.ndarray) -> tuple[Threshold, Threshold]:
        """The image and pixel thresholds of a set of normal images (one image score and one map maximum each)."""
        image_scores, map_maxima = np.asarray(image_scores, np.float64), np.asarray(map_maxima, np.float64)
        self.check_count(len(image_scores))
        return (self._one(image_scores, self.image_margin_sd, "image scores"),
                self._one(map_maxima, self.pixel_margin_sd, "map maxima"))

    def _one(self, values: np.ndarray, margin: float, of: str) -> Threshold:
        if not np.isfinite(values).all():
            raise DecisionError(f"the normal images' {of} hold NaN or infinity; no threshold can be fitted")
        highest, spread = float(values.max()), float(values.std(ddof=1))
        value = highest + margin * spread
        if value >= 1.0:  # the maps end at 1.0: no image could ever score above
            raise DecisionError(f"the normal images' {of} reach {highest:.4f} (sd {spread:.4f}), so the threshold "
                                f"{value:.4f} is at or above the top of the map scale (1.0) and nothing could be judged "
                                f"anomalous; use a smaller margin, other settings or a region of interest")
        return Threshold(value, "normal-images", {
            "rule": "max + margin_sd * sd", "of": of, "margin_sd": margin, "images": int(len(values)),
            "max": highest, "sd": spread, "mean": float(values.mean())})


def f1_optimal(labels: np.ndarray, scores: np.ndarray) -> Threshold:
    """The threshold of highest F1 over a labelled set (anomalib's F1AdaptiveThreshold: the PR curve's best point).

    The best point of the curve flags the scores at or above some score c; the threshold returned lies
    halfway between c and the next lower score (below c when there is none), so `score > threshold` flags
    exactly those. Ties in F1 go to the highest c (the first point on the curve, as torch.argmax in anomalib).
    """
    from sklearn.metrics import precision_recall_curve

    labels, scores = np.asarray(labels).astype(int).ravel(), np.asarray(scores, np.float64).ravel()
    if labels.size != scores.size:
        raise DecisionError(f"{labels.size} labels for {scores.size} scores")
    if not np.isfinite(scores).all():
        raise DecisionError("scores hold NaN or infinity; no F1-optimal threshold can be found")
    if labels.min(initial=0) == labels.max(initial=0):
        raise DecisionError("an F1-optimal threshold needs both normal and anomalous examples; "
                            "with normal images only use the normal-images rule (`iapas threshold`)")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (precision 1, recall 0) has no threshold
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # sklearn's thresholds ascend: the last of the ties is the highest
    cutoff = float(thresholds[best])
    below = scores[scores < cutoff]
    value = (cutoff + float(below.max())) / 2 if below.size else cutoff - max(1e-6, abs(cutoff) * 1e-6)
    return Threshold(value, "f1-optimal", {
        "rule": "max F1 over the labelled set", "f1": float(f1[best]), "precision": float(precision[best]),
        "recall": float(recall[best]), "examples": int(labels.size), "anomalous": int(labels.sum())})


def f1_optimal_from_counts(tp: np.ndarray, fp: np.ndarray, thresholds: np.ndarray, positives: float) -> Threshold:
    """The F1-optimal threshold of binned counts (TP and FP at each threshold, highest threshold first).

    The pixel counterpart of `f1_optimal` for the streaming histograms of `iapas eval`: exact where no two
    distinct scores share a bin, else within one bin width of the exact threshold. The threshold is the
    bin edge below the best bin (`score > edge` then flags that bin's scores, bar one exactly on the edge).
    """
    from ..evaluation.metrics import f1_scores, pr_from_counts

    if positives == 0 or float(np.sum(fp[-1:])) == 0:
        raise DecisionError("an F1-optimal pixel threshold needs both normal and anomalous pixels")
    precision, recall = pr_from_counts(np.asarray(tp, np.float64), np.asarray(fp, np.float64), positives)
    f1 = f1_scores(precision, recall)
    best = int(np.argmax(f1))  # highest threshold first: argmax keeps the highest of the ties
    return Threshold(float(thresholds[best]), "f1-optimal", {
        "rule": "max F1 over the labelled pixels (binned)", "f1": float(f1[best]), "precision": float(precision[best]),
        "recall": float(recall[best]), "bins": int(len(thresholds))})


def manual(value: float, what: str) -> Threshold:
    """A threshold given by hand, checked to lie in the maps' [0, 1]."""
    from ..config import unit_interval

    return Threshold(unit_interval(value, what), "manual", {"rule": "given by hand"})
