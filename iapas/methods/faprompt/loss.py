"""FAPrompt's training loss (mala-lab/FAPrompt train.py, loss.py); the model reads it, the trainer minimises it."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...prompt_learning.vision import upsample_patches
from ..anomalyclip.loss import segmentation_loss

if TYPE_CHECKING:
    from .model import FAPrompt

PRIOR_MAP_WEIGHT = 0.5  # train.py: the prior-enabled map's focal + Dice losses count half
ORTHOGONALITY_WEIGHT = 0.1  # train.py: 0.1 * loss_ab
FOCAL_GAMMA = 2.0  # loss.py BinaryFocalLoss(alpha=1, gamma=2)


def orthogonality_loss(features: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of |cosine| between the abnormality prompt embeddings (P, E) (CAP, Eq. 4; FAPrompt train.py loss_ab)."""
    unit = F.normalize(features, dim=-1)
    cosine = unit @ unit.t()
    return cosine.triu(diagonal=1).abs().sum()


def image_focal_loss(score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Focal loss on the Eq. 9 score, taken as a logit as FAPrompt train.py does (BinaryFocalLoss with logits=True)."""
    bce = F.binary_cross_entropy_with_logits(score.float(), labels.float(), reduction="none")
    return ((1 - torch.exp(-bce)) ** FOCAL_GAMMA * bce).mean()


def prior_loss(bias: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DAP's prior loss (Eq. 7): the prior of a normal image is pushed to zero, summed over normal images (train.py)."""
    per_image = bias.float().pow(2).mean(dim=1)
    return (per_image * (labels < 0.5)).sum()


def faprompt_loss(model: FAPrompt, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Maps: focal + Dice on the prompt-only map and half of it on the prior map; image: cross-entropy of the class
    token, focal on Eq. 9; 0.1 x orthogonality of the abnormality prompts; the prior loss (train.py)."""
    outputs = model(pixels)
    size = masks.shape[-1]
    focal = model.rules.focal
    pixel = segmentation_loss(upsample_patches(outputs.static, size), masks, focal) \
        + PRIOR_MAP_WEIGHT * segmentation_loss(upsample_patches(outputs.prior, size), masks, focal)
    image = F.cross_entropy(outputs.image_logits.float(), labels.long()) + image_focal_loss(outputs.score, labels)
    return pixel + image + ORTHOGONALITY_WEIGHT * orthogonality_loss(outputs.abnormal.float()) \
        + prior_loss(outputs.bias, labels)
