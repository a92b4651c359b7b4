"""Step 1-1: object tags T_n from the chosen normal images, defect words removed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.taggers import Tagger
from ..vocabulary import remove_defect_words


@dataclass
class TagStage:
    """Tags the normal images; defect words ("crack", "scratch", ...) never become tags."""

    tagger: Tagger
    name: str = "tagging"
    inputs: tuple[str, ...] = ("normal_images",)
    outputs: tuple[str, ...] = ("tags",)

    def run(self, normal_images: Sequence[np.ndarray]) -> dict[str, tuple[str, ...]]:
        return {"tags": remove_defect_words(self.tagger.tag(normal_images))}
