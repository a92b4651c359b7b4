"""CLIPSeg with fixed prompts: one sigmoid map per prompt, averaged, up-sampled to the image."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...errors import ConfigError
from ...types import Boxes, Masks, Result
from ..batching import rgb_pixels

# The IAP-AS paper (Table 1) says only that CLIPSeg ran with "fixed prompts". Ours: the two words IAP-AS itself
# always adds to its prompt list ("abnormal", "defect"; iapas/config.py FIXED_PROMPTS), alone and with the
# category's name, so the map neither depends on the category nor ignores it. "{}" takes the object name.
DEFAULT_PROMPTS = ("abnormal", "defect", "abnormal {}", "{} defect")


def prompts_for(templates: Sequence[str], category: str) -> tuple[str, ...]:
    """The templates with the category's name (underscores as spaces) filled in."""
    name = category.replace("_", " ").strip() or "object"
    return tuple(template.format(name) for template in templates)


def merge_maps(probabilities: torch.Tensor) -> torch.Tensor:
    """(P, h, w) per-prompt probabilities -> (h, w): their mean.

    The mean keeps the map in [0, 1] and lets every prompt count equally; a maximum would let the
    most trigger-happy prompt decide every pixel.
    """
    return probabilities.mean(dim=0)


@dataclass
class ClipSeg:
    """`CLIPSegForImageSegmentation` from a local directory, prompted with `templates` filled with the category."""

    path: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    templates: Sequence[str] = DEFAULT_PROMPTS
    category: str = "object"
    name: str = "clipseg"
    prompts: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        from ...backends.base import load_error, quiet_loading, require_path, warn_if_demo

        if not self.templates:
            raise ConfigError("CLIPSeg needs at least one prompt")
        self.path = Path(self.path)
        require_path(self.path, "CLIPSeg", expect_dir=True)
        warn_if_demo(self.path)
        try:
            with quiet_loading():
                self.processor = CLIPSegProcessor.from_pretrained(self.path)
                self.model = CLIPSegForImageSegmentation.from_pretrained(self.path).to(self.device).eval()
        except Exception as error:  # noqa: BLE001 - any loading failure is one line naming the folder
            raise load_error("CLIPSeg", self.path, error) from error
        self.prompts = prompts_for(self.templates, self.category)

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Training-free: only the prompts change with the category."""
        self.category = category
        self.prompts = prompts_for(self.templates, category)

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """(P, h, w) sigmoid of CLIPSeg's logits, one per prompt, at the processor's resolution (352 for CIDAS's)."""
        prompts = list(self.prompts)
        image = np.array(image)  # a writable copy: torch warns on read-only arrays (iapas hands images read-only)
        inputs = self.processor(text=prompts, images=[image] * len(prompts), padding=True, return_tensors="pt")
        logits = self.model(**{key: value.to(self.device) for key, value in inputs.items()}).logits
        return torch.sigmoid(logits.reshape(len(prompts), *logits.shape[-2:]).float())

    @torch.inference_mode()
    def segment(self, image: np.ndarray) -> Result:
        """The averaged prompt maps, bilinearly up-sampled to the image's (H, W)."""
        pixels = rgb_pixels(image)
        height, width = pixels.shape[:2]
        start = time.perf_counter()
        merged = merge_maps(self.probabilities(pixels))
        heat = torch.nn.functional.interpolate(merged[None, None], size=(height, width), mode="bilinear", align_corners=False)
        heat_map = heat[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
        timings = {"clipseg": time.perf_counter() - start}
        return Result(heat_map, Boxes.empty(), Masks.empty(height, width), self.prompts, timings, self.name)
