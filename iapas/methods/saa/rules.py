"""SAA+'s region rules as plain functions on arrays: box filtering, rescoring and the confidence ranking.

Each follows github caoyunkang/Segment-Any-Anomaly `SAA/model.py`; the method names there are cited beside each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

OUT_SIZE = 400  # eval_SAA.py --eval-resolution 400, passed to the model as out_size
SALIENCY_POWER = 3.0  # SAA/model.py rescore: score x exp(3 x mean saliency inside the mask)


@dataclass(frozen=True)
class Proposals:
    """Boxes that passed the filters: normalised (cx, cy, w, h) (N, 4) float32, scores (N,) float32, phrases."""

    cxcywh: np.ndarray
    scores: np.ndarray
    phrases: tuple[str, ...]

    @classmethod
    def empty(cls) -> "Proposals":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def joined(parts: Sequence["Proposals"]) -> "Proposals":
        parts = [part for part in parts if len(part)]
        if not parts:
            return Proposals.empty()
        return Proposals(np.concatenate([p.cxcywh for p in parts]), np.concatenate([p.scores for p in parts]),
                         tuple(phrase for p in parts for phrase in p.phrases))


def filter_boxes(
    probabilities: np.ndarray, cxcywh: np.ndarray, phrase_of: Callable[[np.ndarray], str], filtered_phrase: str,
    box_threshold: float, text_threshold: float, max_area: float, min_area: float = 0.0,
) -> Proposals:
    """SAA/model.py bbox_suppression on one caption's (queries, tokens) probabilities and normalised boxes.

    A box survives when its best token probability is above `box_threshold`, its normalised area w x h is
    strictly between `min_area` and `max_area` (unclamped boxes, as Grounding DINO predicts them), and the phrase
    of its tokens above `text_threshold` does not contain `filtered_phrase`. Its score is that best probability.
    No non-maximum suppression: SAA+ has none.
    """
    best = probabilities.max(axis=1)
    areas = cxcywh[:, 2] * cxcywh[:, 3]
    keep = (best > box_threshold) & (areas < max_area) & (areas > min_area)
    kept, scores, phrases = [], [], []
    for index in np.flatnonzero(keep):
        phrase = phrase_of(probabilities[index] > text_threshold)
        if filtered_phrase in phrase:  # `pred_phrase.count(filtered_phrase) > 0`: a substring, not a word
            continue
        kept.append(cxcywh[index])
        scores.append(best[index])
        phrases.append(phrase)
    if not kept:
        return Proposals.empty()
    return Proposals(np.stack(kept).astype(np.float32), np.array(scores, np.float32), tuple(phrases))


def largest_area(proposals: Proposals) -> float:
    """SAA/model.py ensemble_text_guided_mask_proposal: the largest normalised box area kept, 1 when none was."""
    return float((proposals.cxcywh[:, 2] * proposals.cxcywh[:, 3]).max()) if len(proposals) else 1.0


def pixel_boxes(cxcywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (cx, cy, w, h) -> pixel (x0, y0, x1, y1), not clamped (SAA+ hands SAM the boxes as they are)."""
    scaled = cxcywh * np.array([width, height, width, height], np.float32)
    corners = scaled.copy()
    corners[:, :2] = scaled[:, :2] - scaled[:, 2:] / 2
    corners[:, 2:] = corners[:, :2] + scaled[:, 2:]
    return corners


def rescore(masks: np.ndarray, scores: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """SAA/model.py rescore: each mask's score x exp(3 x the mean saliency inside it); an empty mask keeps its score."""
    rescored = []
    for mask, score in zip(masks, scores):
        inside = saliency[mask]
        rescored.append(score * (np.exp(SALIENCY_POWER * inside.mean()) if inside.size else 1.0))
    return np.array(rescored, np.float64)


def confidence_map(masks: np.ndarray, scores: np.ndarray, max_anomalies: int) -> np.ndarray:
    """SAA/model.py confidence_prompting (before its resize): the top `max_anomalies` masks by score, averaged.

    The kept masks are numpy's default argsort's last `max_anomalies` (ties broken as numpy breaks them);
    map = sum(mask x score) / (1 + number of kept masks covering the pixel).
    """
    chosen = np.argsort(scores)[-max_anomalies:]
    total = np.zeros(masks.shape[1:], np.float64)
    weight = np.ones(masks.shape[1:], np.float64)
    for index in chosen:
        total += masks[index] * scores[index]
        weight += masks[index]
    return total / weight


def output_map(anomaly_map: np.ndarray, size: int = OUT_SIZE) -> np.ndarray:
    """SAA/model.py confidence_prompting's last step: cv2's default (bilinear) resize to size x size."""
    return cv2.resize(anomaly_map, (size, size))
