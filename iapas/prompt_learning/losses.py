"""Losses on anomaly maps and image scores shared by the learned CLIP methods."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_GAMMA = 2.0  # AdaCLIP's and AnomalyCLIP's focal loss exponent


def focal_loss(probability: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA, alpha: float | None = None,
               reduction: str = "mean") -> torch.Tensor:
    """Binary focal loss on probabilities: hard pixels weigh more, the many easy normal ones less.

    `alpha` (Lin et al. 2017's alpha_t) weighs anomalous pixels by alpha and normal ones by 1 - alpha; None
    weighs both 1. `reduction` "mean" averages every element; "sum" sums each image's elements (all but the
    first dimension) and averages the images.
    """
    probability = probability.clamp(1e-6, 1 - 1e-6)
    anomalous = target > 0.5
    p_true = torch.where(anomalous, probability, 1 - probability)
    loss = -(1 - p_true) ** gamma * p_true.log()
    if alpha is not None:
        loss = loss * torch.where(anomalous, alpha, 1 - alpha)
    if reduction == "sum":
        return loss.flatten(1).sum(1).mean()
    return loss.mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, epsilon: float = 0.0) -> torch.Tensor:
    """1 - soft Dice overlap per image, averaged; an all-normal image counts through its false positives.

    1 - (2 sum(p g) + smooth) / (sum p + sum g + smooth + epsilon): AnomalyCLIP's and AdaCLIP's form has
    smooth 1; GenCLIP's Eq. 15 has smooth 0 and a small epsilon in the denominator only.
    """
    dims = tuple(range(1, probability.dim()))
    intersection = (probability * target).sum(dims)
    total = probability.sum(dims) + target.sum(dims)
    return (1 - (2 * intersection + smooth) / (total + smooth + epsilon)).mean()


FOCAL_SMOOTH = 1e-5  # AdaCLIP's FocalLoss default label smoothing (caoyunkang/AdaCLIP loss.py)


def two_class_focal_loss(probabilities: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA,
                         smooth: float = FOCAL_SMOOTH) -> torch.Tensor:
    """Focal loss on (B, 2, ...) normal/anomalous probabilities against a 0/1 target (B, ...) of the same layout.

    The form of caoyunkang/AdaCLIP loss.py `FocalLoss` (no alpha): the one-hot target is clamped to
    [smooth, 1 - smooth], p_t is its dot product with the probabilities plus `smooth`, and the loss is
    -(1 - p_t)^gamma log p_t averaged over every element.
    """
    classes = probabilities.shape[1]
    flat = probabilities.movedim(1, -1).reshape(-1, classes)
    one_hot = F.one_hot((target.reshape(-1) > 0.5).long(), classes).to(flat.dtype)
    one_hot = one_hot.clamp(smooth / (classes - 1), 1.0 - smooth)
    p_t = (one_hot * flat).sum(1) + smooth
    return (-(1 - p_t) ** gamma * p_t.log()).mean()
