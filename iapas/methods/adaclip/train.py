"""Training AdaCLIP's prompts on an auxiliary labelled dataset (zero-shot protocol: train on VisA, test on MVTec)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...prompt_learning import PromptTrainer, TrainOptions, dice_loss, focal_loss
from .model import PROMPT_LENGTH, AdaClip, AdaClipSettings

PROMPTS_FILE = "adaclip_prompts.pt"


@dataclass(frozen=True)
class AdaClipArchitecture:
    """AdaCLIP's own training choices beside the shared TrainOptions."""

    layers: tuple[int, ...] = ()  # empty: four evenly spaced layers
    prompt_length: int = PROMPT_LENGTH
    prompt_depth: int = 0  # 0: AdaCLIP's 4, or the CLIP's depth when it is shallower


def adaclip_loss(model: AdaClip, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Focal + Dice on every layer's map (upsampled to the input size), plus BCE on the HSF image score."""
    patch_maps, image_probability = model(pixels)
    size = pixels.shape[-1]
    maps = F.interpolate(patch_maps.float(), size=(size, size), mode="bilinear", align_corners=False)
    pixel_loss = sum(focal_loss(maps[:, i], masks) + dice_loss(maps[:, i], masks) for i in range(maps.shape[1])) / maps.shape[1]
    image_loss = F.binary_cross_entropy(image_probability.float().clamp(1e-6, 1 - 1e-6), labels)
    return pixel_loss + image_loss


def train_adaclip(options: TrainOptions, architecture: AdaClipArchitecture = AdaClipArchitecture(),
                  note: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    """Train (or resume training of) the prompts; returns the prompt file and this run's per-step losses."""
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    settings = AdaClipSettings.for_backbone(backbone, architecture.layers, architecture.prompt_length,
                                            architecture.prompt_depth)
    model = AdaClip(backbone, settings)
    optimizer = torch.optim.Adam(model.prompts.parameters(), lr=options.learning_rate)
    path, history = PromptTrainer(model, optimizer, options, PROMPTS_FILE, note).run()
    model.eval()
    return path, history
