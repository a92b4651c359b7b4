"""Training AnomalyCLIP's prompts on an auxiliary labelled dataset (zero-shot protocol: train on VisA, test on MVTec AD)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...prompt_learning import PromptTrainer, TrainOptions, dice_loss, focal_loss, two_class_focal_loss
from ...prompt_learning.rules import PromptRules
from ...prompt_learning.vision import upsample_patches
from .model import PROMPTS_FILE, AnomalyClip, AnomalyClipSettings

BETAS = (0.5, 0.999)  # train.py: Adam betas
PIXEL_LOSS_WEIGHT = 4.0  # train.py: lam = 4 on the map losses


@dataclass(frozen=True)
class AnomalyClipArchitecture:
    """AnomalyCLIP's own training choices beside the shared TrainOptions (0 / empty: the reference's)."""

    layers: tuple[int, ...] = ()
    image_size: int = 0
    rules: PromptRules = PromptRules()  # the official recipe's rules (loss, inputs, masks, precision)


def segmentation_loss(maps: torch.Tensor, masks: torch.Tensor, focal: str = "binary") -> torch.Tensor:
    """Focal on the two-class map + Dice(abnormal, mask) + Dice(normal, 1 - mask), maps (B, 2, H, W) (train.py).

    focal "two-class" is the official loss.py FocalLoss over both channels with label smoothing 1e-5
    (`two_class_focal_loss`); "binary" (iapas's default) is a focal loss on the abnormal channel alone.
    """
    focal_term = two_class_focal_loss(maps, masks) if focal == "two-class" else focal_loss(maps[:, 1], masks)
    return focal_term + dice_loss(maps[:, 1], masks) + dice_loss(maps[:, 0], 1 - masks)


def anomalyclip_loss(model: AnomalyClip, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """4 x (per layer focal + two Dice losses on the maps at the input size) + cross-entropy of the class-token logits."""
    probabilities, logits = model(pixels)
    size = masks.shape[-1]
    pixel_loss = sum(segmentation_loss(upsample_patches(probabilities[:, i], size), masks, model.rules.focal)
                     for i in range(probabilities.shape[1]))
    return PIXEL_LOSS_WEIGHT * pixel_loss + F.cross_entropy(logits.float(), labels.long())


def train_anomalyclip(options: TrainOptions, architecture: AnomalyClipArchitecture = AnomalyClipArchitecture(),
                      note: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    """Train (or resume training of) the prompts; returns the prompt file and this run's per-step losses."""
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    settings = AnomalyClipSettings.for_backbone(backbone, layers=architecture.layers, image_size=architecture.image_size)
    model = AnomalyClip(backbone, settings, architecture.rules)
    optimizer = torch.optim.Adam(model.prompts.parameters(), lr=options.learning_rate, betas=BETAS)
    path, history = PromptTrainer(model, optimizer, options, PROMPTS_FILE, note).run()
    model.eval()
    return path, history
