"""Training FAPrompt's prompts and prior network on an auxiliary labelled dataset (zero-shot protocol)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch

from ...backends.clip import ClipBackbone
from ...prompt_learning import PromptTrainer, TrainOptions
from ...prompt_learning.rules import PromptRules
from .model import PROMPTS_FILE, FAPrompt, FAPromptSettings

BETAS = (0.5, 0.999)  # mala-lab/FAPrompt train.py: Adam betas


@dataclass(frozen=True)
class FAPromptArchitecture:
    """FAPrompt's own training choices beside the shared TrainOptions (0: the paper's)."""

    image_size: int = 0
    rules: PromptRules = PromptRules()  # the official recipe's rules (prior patches, loss, inputs, masks, precision)


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
