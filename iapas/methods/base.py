"""What every segmentation method is: prepared once per category, then run image by image."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..config import Config
from ..registry import Registry
from ..types import Result


class Method(Protocol):
    """Prepared once per category (calibration, prompts), then run image by image."""

    name: str

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None: ...

    def segment(self, image: np.ndarray) -> Result: ...


MethodBuilder = Callable[["Config", Sequence[str]], Method]
METHODS: Registry[MethodBuilder] = Registry("method")
