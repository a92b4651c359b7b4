"""Step 2-1: boxes and confidences from Grounding DINO for the prompts P_final."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Detector
from ..types import Boxes


@dataclass
class DetectStage:
    """Runs the detector once per image over all prompts."""

    detector: Detector
    box_threshold: float
    text_threshold: float
    name: str = "detection"
    inputs: tuple[str, ...] = ("image", "prompts")
    outputs: tuple[str, ...] = ("boxes",)

    def run(self, image: np.ndarray, prompts: tuple[str, ...]) -> dict[str, Boxes]:
        return {"boxes": self.detector.detect(image, prompts, self.box_threshold, self.text_threshold)}
