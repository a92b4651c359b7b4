"""Segmentation methods for evaluation, behind one registry: a new method is one new module."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .calibration import Calibration
from .config import Config
from .registry import Registry
from .types import Result


class Method(Protocol):
    """Prepared once per category (calibration, prompts), then run image by image."""

    name: str

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None: ...

    def segment(self, image: np.ndarray) -> Result: ...


METHODS: Registry[Callable[[Config, Sequence[str]], Method]] = Registry("method")
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
        from .calibration import load_calibration

        path = Path(out_dir) / "calibrations" / f"{category}.json"
        if path.is_file():  # resume: the calibration of an interrupted run is reused as it was
            self.calibration = load_calibration(path)
            return
        from .preprocess import PREPROCESS_ABLATIONS

        preprocess_ablation = [step for step in self.ablate if step in PREPROCESS_ABLATIONS]
        self.calibration = self.pipeline.calibrate(list(normal_images), category=category, kind=kind, ablate=preprocess_ablation)
        self.calibration.save(path)

    def segment(self, image: np.ndarray) -> Result:
        return self.pipeline.segment(image, calibration=self.calibration)


@METHODS.register("iapas")
def build_iapas(config: Config, ablate: Sequence[str]) -> Method:
    return IapasMethod(config, tuple(ablate))


def clip_backbone_for(config: Config):
    """The frozen CLIP the config names, or the first one found in the weights dir."""
    from .backends.clip import ClipBackbone
    from .device import resolve_device
    from .weights import chosen_or_found

    path = chosen_or_found("clip", config.clip_methods.weights, config.weights_dir)
    return ClipBackbone(path, resolve_device(config.device))


@METHODS.register("winclip")
def build_winclip(config: Config, ablate: Sequence[str]) -> Method:
    from .baselines.winclip import WinClip

    return WinClip(clip_backbone_for(config), scales=tuple(config.clip_methods.winclip_scales))


@METHODS.register("adaclip")
def build_adaclip(config: Config, ablate: Sequence[str]) -> Method:
    from .baselines.adaclip import AdaClip

    prompts = config.clip_methods.adaclip_prompts or str(Path(config.weights_dir) / "adaclip" / "adaclip_prompts.pt")
    return AdaClip.load(prompts, clip_backbone_for(config))
