"""Losses on anomaly maps and image scores shared by the learned CLIP methods."""
from __future__ import annotations

import torch

FOCAL_GAMMA = 2.0  # AdaCLIP's and AnomalyCLIP's focal loss exponent


def focal_loss(probability: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Binary focal loss on probabilities: hard pixels weigh more, the many easy normal ones less."""
    probability = probability.clamp(1e-6, 1 - 1e-6)
    p_true = torch.where(target > 0.5, probability, 1 - probability)
    return (-(1 - p_true) ** gamma * p_true.log()).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice overlap per image, averaged; an all-normal image counts through its false positives."""
    dims = tuple(range(1, probability.dim()))
    intersection = (probability * target).sum(dims)
    total = probability.sum(dims) + target.sum(dims)
    return (1 - (2 * intersection + 1) / (total + 1)).mean()
