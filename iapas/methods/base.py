"""What every segmentation method is: prepared once per category, then run image by image."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..config import Config
from ..registry import Registry
from ..types import Result


class Method(Protocol):
    """Prepared once per category (calibration, prompts), then run image by image.

    A method may name its image-score rule for `iapas eval` in `default_image_score`: "method" ranks
    images by `Result.image_score` (AdaCLIP's HSF score); without it, the map's maximum is used.
    A method may also take several images at once, `segment_outcomes(images, batch_size)` handing back each
    image's Result or exception (the CLIP methods, `batching.BatchedMethod`); the engines reach it as `many`.
    """

    name: str

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None: ...

    def segment(self, image: np.ndarray) -> Result: ...


MethodBuilder = Callable[["Config", Sequence[str]], Method]
METHODS: Registry[MethodBuilder] = Registry("method")
