"""IAP-AS (Image-Aware Prompt Anomaly Segmentation): tags -> LLM defect prompts -> Grounding DINO -> size filter -> SAM.

The paper is in shared/seeds; the authors' code is github sybeam27/IAP-ZSAS. `pipeline.py` holds the
segmentation graph and the Python API, `preprocess.py` the per-category calibration (tagging, size
threshold, LLM prompting) and `prompting.py` the LLM template and answer parsing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...calibration import Calibration
from ...config import Config
from ...types import Result

if TYPE_CHECKING:
    from ..base import Method

IAPAS_ABLATIONS = ("tagging", "llm", "filter")  # Table 3: steps 1-1, 1-3 and 2-2


@dataclass
class IapasMethod:
    """IAP-AS: calibrate each category from its normal images, then segment with P_final and S_threshold."""

    config: Config
    ablate: Sequence[str] = ()
    name: str = "iapas"

    def __post_init__(self) -> None:
        from .pipeline import Pipeline

        self.pipeline = Pipeline.from_config(self.config)
        if "filter" in self.ablate:
            self.pipeline.graph = self.pipeline.graph.without("size_filter")
        self.calibration: Calibration | None = None

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Calibrate the category (or read back the calibration of an interrupted run)."""
        from ...calibration import load_calibration
        from .preprocess import PREPROCESS_ABLATIONS

        path = Path(out_dir) / "calibrations" / f"{category}.json"
        if path.is_file():  # resume: the calibration of an interrupted run is reused as it was
            self.calibration = load_calibration(path)
            return
        preprocess_ablation = [step for step in self.ablate if step in PREPROCESS_ABLATIONS]
        self.calibration = self.pipeline.calibrate(list(normal_images), category=category, kind=kind, ablate=preprocess_ablation)
        self.calibration.save(path)

    def segment(self, image: np.ndarray) -> Result:
        return self.pipeline.segment(image, calibration=self.calibration)

    def segment_outcomes(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[Result | Exception]:
        """Several images with the category's calibration, `batch_size` per detector / SAM forward, each failure in its place."""
        return self.pipeline.segment_outcomes(images, batch_size, calibration=self.calibration)


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """IAP-AS with the config's models; `ablate` switches off Table 3's steps."""
    return IapasMethod(config, tuple(ablate))
