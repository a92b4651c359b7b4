"""AnomalyCLIP's training loss (zqhang/AnomalyCLIP train.py); the model reads it, the trainer minimises it."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...prompt_learning import dice_loss, focal_loss, two_class_focal_loss
from ...prompt_learning.vision import upsample_patches

if TYPE_CHECKING:
    from .model import AnomalyClip

PIXEL_LOSS_WEIGHT = 4.0  # train.py: lam = 4 on the map losses


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
