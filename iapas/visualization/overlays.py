"""Pictures people look at: heatmap overlays with labelled boxes."""
from __future__ import annotations

import cv2
import numpy as np

from ..types import Boxes


def heatmap(anomaly_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB jet colouring of a [0, 1] map (absolute scale: 1.0 is always red)."""
    scaled = np.round(np.clip(anomaly_map, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the heatmap over the image where the map is above zero; elsewhere the image shows unchanged."""
    colours = heatmap(anomaly_map).astype(np.float32)
    weight = (alpha * (anomaly_map > 0))[:, :, None].astype(np.float32)
    blended = image.astype(np.float32) * (1 - weight) + colours * weight
    return np.round(blended).astype(np.uint8)


def box_labels(boxes: Boxes) -> list[str]:
    return [f"{phrase or '?'} {score:.2f}" for phrase, score in zip(boxes.phrases, boxes.scores)]


def annotate_boxes(image: np.ndarray, boxes: Boxes) -> np.ndarray:
    """Draw boxes and "phrase score" labels with supervision's annotators."""
    if len(boxes) == 0:
        return image.copy()
    import supervision as sv  # here: its import (scipy, matplotlib) costs some 2 s, and an image without boxes needs none

    phrases = sorted(set(boxes.phrases))
    detections = sv.Detections(
        xyxy=boxes.xyxy.astype(np.float64),
        confidence=boxes.scores.astype(np.float64),
        class_id=np.array([phrases.index(p) for p in boxes.phrases], dtype=int),
    )
    thickness = max(1, round(min(image.shape[:2]) / 300))
    scene = sv.BoxAnnotator(thickness=thickness).annotate(scene=image.copy(), detections=detections)
    label_scale = max(0.3, min(image.shape[:2]) / 1000)
    return sv.LabelAnnotator(text_scale=label_scale, text_padding=max(2, thickness * 3)).annotate(
        scene=scene, detections=detections, labels=box_labels(boxes)
    )


def result_overlay(image: np.ndarray, anomaly_map: np.ndarray, boxes: Boxes) -> np.ndarray:
    """The picture written for each image: heatmap overlay plus labelled boxes."""
    return annotate_boxes(overlay(image, anomaly_map), boxes)
