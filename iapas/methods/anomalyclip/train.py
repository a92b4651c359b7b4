"""Training AnomalyCLIP's prompts on an auxiliary labelled dataset (zero-shot protocol: train on VisA, test on MVTec AD)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch

from ...backends.clip import ClipBackbone
from ...prompt_learning import PromptTrainer, TrainOptions
from ...prompt_learning.rules import PromptRules
from .model import PROMPTS_FILE, AnomalyClip, AnomalyClipSettings

BETAS = (0.5, 0.999)  # train.py: Adam betas


@dataclass(frozen=True)
class AnomalyClipArchitecture:
    """AnomalyCLIP's own training choices beside the shared TrainOptions (0 / empty: the reference's)."""

    layers: tuple[int, ...] = ()
    image_size: int = 0
    rules: PromptRules = PromptRules()  # the official recipe's rules (loss, inputs, masks, precision)


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
