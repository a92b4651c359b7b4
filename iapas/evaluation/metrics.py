"""Pixel and image metrics with bounded memory: binned score histograms, exact where scores fall on bins.

Pixel scores are accumulated into `bins` equal-width histograms over [low, high] (default [0, 1],
the range of every iapas map), one for anomalous and one for normal pixels. Thresholds are the bin
edges, so AP, F1-max and AUROC are exact (equal to sklearn's) whenever no two distinct scores share
a bin, and otherwise differ by at most the effect of merging scores within 1/bins of each other
(tests check |binned - sklearn| < 2e-3 for 4096 bins on a million continuous scores). AUPRO keeps one
histogram per ground-truth region summed over regions, so memory is O(bins) whatever the dataset.
Ground-truth regions are 8-connected (pixels touching at a corner are one defect), as in MVTec AD's
own evaluation, anomalib and AnomalyCLIP. Image-level metrics use sklearn on the (few) image scores.

`exact_pixel_metrics` is the paper protocol's exact counterpart for a whole category held at once:
AP and AUROC over every distinct score (equal to sklearn's) and F1-max over a fixed list of thresholds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from ..errors import MetricsInputError

DEFAULT_BINS = 4096
PRO_FPR_LIMIT = 0.3  # AUPRO integrates PRO over FPR in [0, 0.3], normalised by 0.3
# 8-connected regions: MVTec AD's evaluation code, anomalib's AUPRO and AnomalyCLIP's metrics all label so
REGION_CONNECTIVITY = np.ones((3, 3), bool)


def check_binnable(scores: np.ndarray, low: float, high: float, name: str = "") -> None:
    """Refuse scores the histogram cannot hold honestly: NaN, or outside [low, high] (clipping would move them)."""
    scores = np.asarray(scores)
    where = f" of {name}" if name else ""
    if scores.size and np.isnan(scores).any():
        raise MetricsInputError(f"anomaly map{where} holds NaN at {int(np.isnan(scores).sum())} pixel(s); metrics cannot rank it")
    if scores.size and (scores.min() < low or scores.max() > high):
        raise MetricsInputError(f"anomaly map{where} has values in [{float(scores.min()):.6g}, {float(scores.max()):.6g}], "
                                f"outside the metrics' range [{low:g}, {high:g}]; normalise it first")


def _bin_index(scores: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """The bin of each score in [low, high]; `high` itself falls in the last bin (callers check the range first)."""
    scaled = (np.asarray(scores, np.float64).ravel() - low) * (bins / (high - low))
    return np.minimum(np.floor(scaled), bins - 1).astype(np.int64)


def _descending_cumsum(histogram: np.ndarray) -> np.ndarray:
    """Counts at or above each bin's lower edge, highest bin first."""
    return np.cumsum(histogram[::-1])


def pr_from_counts(tp: np.ndarray, fp: np.ndarray, positives: float) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each threshold (thresholds in descending order)."""
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones_like(tp, dtype=np.float64), where=predicted > 0)
    recall = tp / positives if positives else np.zeros_like(tp, dtype=np.float64)
    return precision, recall


def average_precision_from_counts(tp: np.ndarray, fp: np.ndarray, positives: float) -> float:
    """sklearn's step-wise AP: sum over thresholds of (recall increase) x precision."""
    if positives == 0:
        return float("nan")
    precision, recall = pr_from_counts(tp.astype(np.float64), fp.astype(np.float64), positives)
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * precision))


def f1_scores(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F1 at each point of a precision-recall curve; 0 where precision and recall are both 0."""
    denominator = precision + recall
    return np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator, dtype=np.float64), where=denominator > 0)


def f1_max_from_counts(tp: np.ndarray, fp: np.ndarray, positives: float) -> tuple[float, int]:
    """Best F1 over thresholds and the index of the threshold that reaches it."""
    if positives == 0:
        return float("nan"), 0
    precision, recall = pr_from_counts(tp.astype(np.float64), fp.astype(np.float64), positives)
    f1 = f1_scores(precision, recall)
    best = int(np.argmax(f1))
    return float(f1[best]), best


def auroc_from_counts(tp: np.ndarray, fp: np.ndarray, positives: float, negatives: float) -> float:
    """Trapezoidal area under the ROC curve through the thresholds."""
    if positives == 0 or negatives == 0:
        return float("nan")
    tpr = np.concatenate([[0.0], tp / positives])
    fpr = np.concatenate([[0.0], fp / negatives])
    return float(np.trapezoid(tpr, fpr))


@dataclass
class PixelMetrics:
    """Streaming pixel AP, F1-max, AUROC and AUPRO over any number of maps."""

    bins: int = DEFAULT_BINS
    low: float = 0.0
    high: float = 1.0
    with_pro: bool = True
    positive: np.ndarray = field(init=False)
    negative: np.ndarray = field(init=False)
    region_overlap_sum: np.ndarray = field(init=False)  # per-threshold sum over regions of overlap fractions
    regions: int = 0

    def __post_init__(self) -> None:
        self.positive = np.zeros(self.bins, np.int64)
        self.negative = np.zeros(self.bins, np.int64)
        self.region_overlap_sum = np.zeros(self.bins, np.float64)

    def update(self, anomaly_map: np.ndarray, mask: np.ndarray, name: str = "") -> None:
        """Add one image (`name` for messages): its (H, W) scores in [low, high] and its (H, W) bool ground truth."""
        if anomaly_map.shape != mask.shape:
            raise MetricsInputError(f"map {anomaly_map.shape} and mask {mask.shape} of {name or 'an image'} differ in shape")
        check_binnable(anomaly_map, self.low, self.high, name)
        indices = _bin_index(anomaly_map, self.low, self.high, self.bins)
        flat_mask = mask.ravel().astype(bool)
        self.positive += np.bincount(indices[flat_mask], minlength=self.bins)
        self.negative += np.bincount(indices[~flat_mask], minlength=self.bins)
        if self.with_pro and flat_mask.any():
            labels, count = ndimage.label(mask, structure=REGION_CONNECTIVITY)
            region_labels, region_indices = labels.ravel()[flat_mask], indices[flat_mask]  # region pixels only
            for region in range(1, count + 1):
                in_region = region_labels == region
                histogram = np.bincount(region_indices[in_region], minlength=self.bins)
                self.region_overlap_sum += _descending_cumsum(histogram)[::-1] / in_region.sum()
            self.regions += count

    def merge(self, other: "PixelMetrics") -> None:
        self.positive += other.positive
        self.negative += other.negative
        self.region_overlap_sum += other.region_overlap_sum
        self.regions += other.regions

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(TP, FP) at each threshold, highest threshold first."""
        return _descending_cumsum(self.positive), _descending_cumsum(self.negative)

    def thresholds(self) -> np.ndarray:
        """Lower bin edges, highest first: pixel >= threshold is predicted anomalous."""
        edges = self.low + (self.high - self.low) * np.arange(self.bins) / self.bins
        return edges[::-1]

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        tp, fp = self.counts()
        return pr_from_counts(tp.astype(np.float64), fp.astype(np.float64), float(self.positive.sum()))

    def aupro(self, fpr_limit: float = PRO_FPR_LIMIT) -> float:
        """Area under PRO(FPR) for FPR in [0, limit], divided by the limit."""
        negatives = float(self.negative.sum())
        if not self.regions or negatives == 0:
            return float("nan")
        fpr = np.concatenate([[0.0], _descending_cumsum(self.negative) / negatives])
        pro = np.concatenate([[0.0], self.region_overlap_sum[::-1] / self.regions])
        keep = fpr <= fpr_limit
        x, y = fpr[keep], pro[keep]
        if x[-1] < fpr_limit:  # close the curve exactly at the limit by interpolating to the next point
            following = np.searchsorted(fpr, fpr_limit)
            if following < len(fpr):
                x0, x1, y0, y1 = fpr[following - 1], fpr[following], pro[following - 1], pro[following]
                y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
                x, y = np.append(x, fpr_limit), np.append(y, y_limit)
        return float(np.trapezoid(y, x) / fpr_limit)

    def summary(self) -> dict[str, float]:
        tp, fp = self.counts()
        positives, negatives = float(self.positive.sum()), float(self.negative.sum())
        f1, _ = f1_max_from_counts(tp, fp, positives)
        result = {
            "pixel_ap": average_precision_from_counts(tp, fp, positives),
            "pixel_f1_max": f1,
            "pixel_auroc": auroc_from_counts(tp, fp, positives, negatives),
        }
        if self.with_pro:
            result["pixel_aupro"] = self.aupro()
        return result

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save for resuming."""
        return {"positive": self.positive, "negative": self.negative, "region_overlap_sum": self.region_overlap_sum,
                "regions": np.array(self.regions)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.positive = np.array(state["positive"], np.int64)
        self.negative = np.array(state["negative"], np.int64)
        self.region_overlap_sum = np.array(state["region_overlap_sum"], np.float64)
        self.regions = int(state["regions"])


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image AUROC, AP and F1-max (exact, sklearn) from per-image labels and scores."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, np.float64)
    if len(np.unique(labels)) < 2:
        return {"image_auroc": float("nan"), "image_ap": float("nan"), "image_f1_max": float("nan")}
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = f1_scores(precision, recall)
    return {
        "image_auroc": float(roc_auc_score(labels, scores)),
        "image_ap": float(average_precision_score(labels, scores)),
        "image_f1_max": float(f1.max()),
    }


def _first_at_or_above(ordered: np.ndarray, threshold: float, low: float, span: float) -> int:
    """Index of the first value of the ascending `ordered` whose min-max normalised score is >= threshold.

    The normalised score (x - low) / span is computed in float64 exactly as a normalised array would
    be, so pixels sitting on a threshold fall on the same side as in the official code.
    """
    if span == 0:  # a constant category normalises to zeros (utils/function.py normalize)
        return 0 if threshold <= 0 else len(ordered)

    def score(i: int) -> float:
        return (float(ordered[i]) - low) / span

    # a first guess in the array's own dtype (a float64 key would make numpy cast the whole array per call)
    index = int(np.searchsorted(ordered, np.asarray(low + threshold * span, ordered.dtype), side="left"))
    while index > 0 and score(index - 1) >= threshold:  # jump back over whole runs of tied values
        index = int(np.searchsorted(ordered, ordered[index - 1], side="left"))
    while index < len(ordered) and score(index) < threshold:
        index = int(np.searchsorted(ordered, ordered[index], side="right"))
    return index


def exact_pixel_metrics(positives: np.ndarray, negatives: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """Exact AP, AUROC and F1-max of a category from its anomalous and normal pixel scores (any order).

    AP and AUROC depend only on the order of the scores, so they are computed on the scores as given
    (a min-max normalisation with positive span keeps order and ties). F1-max is the best F1 over
    `thresholds` applied to the scores min-max normalised over both sets with `score >= t`.
    `negatives` is sorted in place to save a copy of the largest array.
    """
    if len(positives) == 0:
        return {"pixel_ap": float("nan"), "pixel_f1_max": float("nan"), "pixel_auroc": float("nan")}
    negatives.sort()
    values, counts = np.unique(positives, return_counts=True)
    total_positive, total_negative = float(len(positives)), float(len(negatives))
    tp = total_positive - (np.cumsum(counts) - counts)  # positives >= each distinct positive score
    negatives_below = np.searchsorted(negatives, values, side="left")
    fp = total_negative - negatives_below  # normal pixels >= each distinct positive score
    # sklearn's AP: recall steps only at distinct positive scores, precision there counts every tie
    ap = float(np.sum(counts / total_positive * tp / (tp + fp)))
    ties = np.searchsorted(negatives, values, side="right") - negatives_below
    auroc = float(np.sum(counts * (negatives_below + 0.5 * ties)) / (total_positive * total_negative)) if total_negative else float("nan")
    ordered_positive = np.sort(positives)
    low = float(min(ordered_positive[0], negatives[0] if len(negatives) else np.inf))
    high = float(max(ordered_positive[-1], negatives[-1] if len(negatives) else -np.inf))
    span = high - low
    best = 0.0
    for threshold in thresholds:
        hits = len(ordered_positive) - _first_at_or_above(ordered_positive, float(threshold), low, span)
        false = len(negatives) - _first_at_or_above(negatives, float(threshold), low, span)
        if hits:  # F1 is 0 without a true positive (utils/function.py calculate_max_f1)
            precision, recall = hits / (hits + false), hits / total_positive
            best = max(best, 2 * precision * recall / (precision + recall))
    return {"pixel_ap": ap, "pixel_f1_max": best, "pixel_auroc": auroc}
