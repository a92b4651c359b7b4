"""The decision picture: heatmap, binary-mask contours, labelled boxes and regions, a colour bar with the
threshold marked and the verdict, in one colour scheme for every method (jet over the absolute [0, 1] scale).

Labels go through supervision's LabelAnnotator with `smart_position`, which moves labels apart and keeps
them inside the image, so labels never overlap or run off the picture.
"""
from __future__ import annotations

import cv2
import numpy as np
import supervision as sv

from ..types import Boxes
from .overlays import box_labels, heatmap, overlay

VERDICT_COLOURS = {"anomalous": (220, 30, 30), "normal": (30, 160, 60), "undecided": (110, 110, 110)}  # RGB
CONTOUR_COLOUR = (255, 255, 255)
THRESHOLD_COLOUR = (255, 0, 255)


def mask_contours(image: np.ndarray, mask: np.ndarray | None, thickness: int) -> np.ndarray:
    """The binary mask's outer and inner outlines drawn over `image` (white with a dark edge, visible on any colour)."""
    if mask is None or not mask.any():
        return image
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    picture = image.copy()
    cv2.drawContours(picture, contours, -1, (0, 0, 0), thickness + 2)
    cv2.drawContours(picture, contours, -1, CONTOUR_COLOUR, thickness)
    return picture


MAX_LABELS = 8  # more labels than this cannot all find a free place on a small picture


def labelled(image: np.ndarray, boxes: Boxes, regions: list, thickness: int, decided: bool) -> np.ndarray:
    """Boxes (IAP-AS detections) and labels through one label annotator, so none overlap.

    With a defect mask the regions are labelled (their rank, peak score and, for IAP-AS, phrase) and the
    boxes drawn bare; without one the boxes are labelled as before. At most MAX_LABELS labels, highest first.
    """
    scene = image.copy()
    if len(boxes):
        drawn = sv.Detections(xyxy=boxes.xyxy.astype(np.float64), class_id=np.zeros(len(boxes), int))
        scene = sv.BoxAnnotator(thickness=thickness).annotate(scene=scene, detections=drawn)
    if decided:
        shown = list(regions)[:MAX_LABELS]
        xyxy = [list(map(float, r.box)) for r in shown]
        labels = [f"#{i} {r.peak_score:.2f}" + (f" {r.phrase}" if r.phrase else "") for i, r in enumerate(shown, start=1)]
    else:
        top = boxes.top(MAX_LABELS)
        xyxy, labels = [list(map(float, box)) for box in top.xyxy], box_labels(top)
    if not xyxy:
        return scene
    detections = sv.Detections(xyxy=np.array(xyxy, np.float64).reshape(-1, 4), class_id=np.ones(len(xyxy), int))
    scale = max(0.3, min(image.shape[:2]) / 1000)
    return sv.LabelAnnotator(text_scale=scale, text_padding=max(2, thickness * 2), smart_position=True).annotate(
        scene=scene, detections=detections, labels=labels)


def colour_bar(width: int, height: int, threshold: float | None, verdict: str, score: float) -> np.ndarray:
    """(height, width, 3) strip: the verdict and score on the left, the jet scale 0..1 with the threshold marked."""
    strip = np.full((height, width, 3), 255, np.uint8)
    text_scale = max(0.35, height / 60)
    thick = max(1, round(height / 30))
    label = f"{verdict.upper()}  score {score:.3f}"
    (label_w, label_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, text_scale, thick)
    left = min(label_w + 12, width // 2)
    cv2.rectangle(strip, (0, 0), (left - 4, height - 1), VERDICT_COLOURS.get(verdict, (110, 110, 110)), -1)
    cv2.putText(strip, label, (4, (height + label_h) // 2), cv2.FONT_HERSHEY_SIMPLEX, text_scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    bar_x0, bar_x1 = left + 6, width - 6
    bar_y0, bar_y1 = 2, max(3, height // 2)
    if bar_x1 - bar_x0 < 10:
        return strip
    ramp = np.linspace(0.0, 1.0, bar_x1 - bar_x0, dtype=np.float32)[None, :].repeat(bar_y1 - bar_y0, axis=0)
    strip[bar_y0:bar_y1, bar_x0:bar_x1] = heatmap(ramp)
    tick_scale = text_scale * 0.8
    for value in (0.0, 0.5, 1.0):
        x = bar_x0 + round(value * (bar_x1 - bar_x0 - 1))
        cv2.line(strip, (x, bar_y1), (x, bar_y1 + 3), (0, 0, 0), 1)
        text = f"{value:g}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, tick_scale, 1)
        cv2.putText(strip, text, (min(max(bar_x0, x - tw // 2), bar_x1 - tw), min(height - 2, bar_y1 + 4 + th)),
                    cv2.FONT_HERSHEY_SIMPLEX, tick_scale, (0, 0, 0), 1, cv2.LINE_AA)
    if threshold is not None and 0.0 <= threshold <= 1.0:
        x = bar_x0 + round(threshold * (bar_x1 - bar_x0 - 1))
        cv2.line(strip, (x, 0), (x, bar_y1 + 2), THRESHOLD_COLOUR, max(2, thick))
    return strip


def decision_picture(image: np.ndarray, anomaly_map: np.ndarray, boxes: Boxes, verdict: str, score: float,
                     mask: np.ndarray | None = None, regions: list | None = None,
                     threshold: float | None = None) -> np.ndarray:
    """(H + strip, W, 3) uint8: the overlay with contours and labels, above the verdict and the colour bar."""
    thickness = max(1, round(min(image.shape[:2]) / 300))
    picture = labelled(mask_contours(overlay(image, anomaly_map), mask, thickness), boxes, list(regions or []), thickness,
                       mask is not None)
    strip_height = int(np.clip(round(image.shape[0] * 0.08), 24, 64))
    return np.concatenate([picture, colour_bar(image.shape[1], strip_height, threshold, verdict, score)], axis=0)
