"""A deterministic non-model method for the evaluation tests, registered as `test-brightness`.

Dark pixels score high. `RUNS["current"]` is the instance the registry hands out, so a test can swap in a
fresh one (or one that stops after N images, as an interrupted run does) and count its calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iapas.methods import METHODS
from iapas.types import Boxes, Masks, Result


@dataclass
class BrightnessMethod:
    """Scores 1 - mean brightness per pixel; raises KeyboardInterrupt after `stop_after` images when set."""

    calls: int = 0
    stop_after: int = 0
    name: str = "brightness"

    def prepare(self, category, normal_images, kind, out_dir):
        self.kind = kind

    def segment(self, image):
        self.calls += 1
        if self.stop_after and self.calls > self.stop_after:
            raise KeyboardInterrupt
        heat = 1.0 - image.mean(axis=2).astype(np.float32) / 255
        return Result(heat, Boxes.empty(), Masks.empty(*heat.shape), ())


RUNS: dict[str, BrightnessMethod] = {}
METHODS.register("test-brightness")(lambda config, ablate: RUNS.setdefault("current", BrightnessMethod()))
