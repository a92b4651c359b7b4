"""AdaCLIP's training loss (method/trainer.py `train_one_batch`); the model reads it, the trainer minimises it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from ...prompt_learning import dice_loss, two_class_focal_loss

if TYPE_CHECKING:
    from .model import AdaClip


def adaclip_loss(model: AdaClip, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                 class_names: Sequence[str]) -> torch.Tensor:
    """method/trainer.py `train_one_batch`: focal on the image score + per layer focal + Dice(anomalous) + Dice(normal).

    Each layer's logits are upsampled (bilinear, align_corners True) to the input size and soft-maxed on
    their own (`aggregation=False`); the per-layer losses are summed, not averaged.
    """
    output = model(pixels, class_names)
    size = pixels.shape[-1]
    target = masks.float()
    loss = two_class_focal_loss(output.image_probabilities.float(), labels.float())
    for layer in range(output.layer_logits.shape[1]):
        logits = output.layer_logits[:, layer].float()
        probabilities = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True).softmax(dim=1)
        loss = loss + two_class_focal_loss(probabilities, target) + reference_dice(probabilities[:, 1], target) \
            + reference_dice(probabilities[:, 0], 1 - target)
    return loss


def reference_dice(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss grouped as the reference groups it: per image, but per row of the map for a batch of one.

    method/trainer.py squeezes the (1, 1, H, W) mask to (H, W) and loss.py `BinaryDiceLoss` takes its
    first dimension as the batch, so at the reference's batch size 1 every row is its own Dice term.
    Checked against the official code on a random CLIP (docs/methods/adaclip.md).
    """
    if len(target) == 1:
        return dice_loss(probability[0], target[0])
    return dice_loss(probability, target)
