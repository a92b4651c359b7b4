import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from iapas.evaluation.metrics import PixelMetrics, image_metrics


def sklearn_f1_max(labels, scores):
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=(precision + recall) > 0)
    return f1.max()


def test_hand_computed_case():
    # scores 0.75, 0.5, 0.5, 0.25 with labels 1, 1, 0, 0:
    # threshold 0.75 -> P 1, R 0.5; 0.5 -> P 2/3, R 1; 0.25 -> P 0.5, R 1.
    # AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333; F1-max = 2 * (2/3) / (5/3) = 0.8; AUROC = 0.875.
    scores = np.array([[0.75, 0.5], [0.5, 0.25]])
    mask = np.array([[True, True], [False, False]])
    metrics = PixelMetrics(bins=4, with_pro=False)
    metrics.update(scores, mask)
    summary = metrics.summary()
    assert summary["pixel_ap"] == pytest.approx(5 / 6)
    assert summary["pixel_f1_max"] == pytest.approx(0.8)
    assert summary["pixel_auroc"] == pytest.approx(0.875)


def test_exact_against_sklearn_when_scores_sit_on_bins():
    rng = np.random.default_rng(0)
    levels = np.arange(0, 4096, 37) / 4096
    maps = [levels[rng.integers(0, len(levels), (30, 40))] for _ in range(5)]
    masks = [rng.random((30, 40)) < 0.1 + 0.6 * (m > 0.6) for m in maps]
    metrics = PixelMetrics(with_pro=False)
    for m, g in zip(maps, masks):
        metrics.update(m, g)  # streamed image by image
    labels, scores = np.concatenate([g.ravel() for g in masks]), np.concatenate([m.ravel() for m in maps])
    summary = metrics.summary()
    assert summary["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert summary["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert summary["pixel_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


def test_binned_tolerance_on_a_million_continuous_scores():
    rng = np.random.default_rng(1)
    scores = rng.random((1000, 1000))
    labels = rng.random((1000, 1000)) < 0.02 + 0.4 * (scores > 0.8)
    metrics = PixelMetrics(with_pro=False)
    metrics.update(scores, labels)
    summary = metrics.summary()
    assert abs(summary["pixel_ap"] - average_precision_score(labels.ravel(), scores.ravel())) < 2e-3
    assert abs(summary["pixel_auroc"] - roc_auc_score(labels.ravel(), scores.ravel())) < 2e-3
    assert abs(summary["pixel_f1_max"] - sklearn_f1_max(labels.ravel(), scores.ravel())) < 2e-3
    assert metrics.positive.nbytes + metrics.negative.nbytes == 2 * 4096 * 8  # memory independent of pixels


def brute_force_aupro(maps, masks, limit=0.3):
    """Reference: every distinct score as a threshold, regions by scipy, trapezoid to FPR 0.3."""
    from scipy import ndimage

    regions = []
    for m, g in zip(maps, masks):
        labels, count = ndimage.label(g, structure=np.ones((3, 3)))  # 8-connected regions
        regions += [(m, labels == k) for k in range(1, count + 1)]
    normal = np.concatenate([m[~g] for m, g in zip(maps, masks)])
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fpr = (normal >= t).mean()
        pro = np.mean([(m[r] >= t).mean() for m, r in regions])
        points.append((fpr, pro))
    x, y = np.array(points).T
    keep = x <= limit
    xs, ys = list(x[keep]), list(y[keep])
    if xs[-1] < limit:
        i = np.searchsorted(x, limit)
        ys.append(y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1]))
        xs.append(limit)
    return np.trapezoid(ys, xs) / limit


def test_aupro_matches_a_brute_force_reference():
    rng = np.random.default_rng(2)
    levels = np.arange(0, 4096, 64) / 4096
    maps, masks = [], []
    for _ in range(3):
        g = np.zeros((32, 32), bool)
        g[4:10, 4:12] = True  # two regions of different sizes per image
        g[20:30, 18:22] = True
        m = levels[rng.integers(0, len(levels), g.shape)]
        m[g] = np.minimum(m[g] + 0.3, levels[-1])
        m = levels[np.searchsorted(levels, m)]
        maps.append(m)
        masks.append(g)
    metrics = PixelMetrics()
    for m, g in zip(maps, masks):
        metrics.update(m, g)
    assert metrics.regions == 6
    assert metrics.aupro() == pytest.approx(brute_force_aupro(maps, masks), abs=1e-9)


def test_aupro_perfect_and_state_round_trip():
    g = np.zeros((10, 10), bool)
    g[2:4, 2:4] = True
    metrics = PixelMetrics()
    metrics.update(g.astype(np.float32), g)
    assert metrics.aupro() == pytest.approx(1.0)
    restored = PixelMetrics()
    restored.restore(metrics.state())
    assert restored.summary() == metrics.summary()


def test_image_metrics_against_sklearn():
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    result = image_metrics(labels, scores)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert result["image_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores))
    assert np.isnan(image_metrics(np.ones(3), np.ones(3))["image_auroc"])
