"""Step 2-1: boxes and confidences from Grounding DINO for the prompts P_final."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Detector
from ..types import Boxes


@dataclass
class DetectStage:
    """Runs the detector once per image over all prompts; thresholds come per call (a calibration sets them)."""

    detector: Detector
    name: str = "detection"
    inputs: tuple[str, ...] = ("image", "prompts", "box_threshold", "text_threshold")
    outputs: tuple[str, ...] = ("boxes",)

    def run(self, image: np.ndarray, prompts: tuple[str, ...], box_threshold: float, text_threshold: float) -> dict[str, Boxes]:
        return {"boxes": self.detector.detect(image, prompts, box_threshold, text_threshold)}
