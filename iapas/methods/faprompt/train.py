"""Training FAPrompt's prompts and prior network on an auxiliary labelled dataset (zero-shot protocol)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...prompt_learning import PromptTrainer, TrainOptions
from ...prompt_learning.rules import PromptRules
from ...prompt_learning.vision import upsample_patches
from ..anomalyclip.train import segmentation_loss
from .model import PROMPTS_FILE, FAPrompt, FAPromptSettings, orthogonality_loss

BETAS = (0.5, 0.999)  # mala-lab/FAPrompt train.py: Adam betas
PRIOR_MAP_WEIGHT = 0.5  # train.py: the prior-enabled map's focal + Dice losses count half
ORTHOGONALITY_WEIGHT = 0.1  # train.py: 0.1 * loss_ab
FOCAL_GAMMA = 2.0  # loss.py BinaryFocalLoss(alpha=1, gamma=2)


@dataclass(frozen=True)
class FAPromptArchitecture:
    """FAPrompt's own training choices beside the shared TrainOptions (0: the paper's)."""

    image_size: int = 0
    rules: PromptRules = PromptRules()  # the official recipe's rules (prior patches, loss, inputs, masks, precision)


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


def train_faprompt(options: TrainOptions, architecture: FAPromptArchitecture = FAPromptArchitecture(),
                   note: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    """Train (or resume training of) the prompts and prior network; returns the prompt file and this run's losses."""
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    model = FAPrompt(backbone, FAPromptSettings.for_backbone(backbone, image_size=architecture.image_size), architecture.rules)
    optimizer = torch.optim.Adam(model.prompts.parameters(), lr=options.learning_rate, betas=BETAS)
    path, history = PromptTrainer(model, optimizer, options, PROMPTS_FILE, note).run()
    model.eval()
    return path, history
