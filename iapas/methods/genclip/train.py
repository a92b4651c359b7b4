"""Training GenCLIP's prompts on an auxiliary labelled dataset (§4.1: MVTec AD to test on the others, VisA to test on MVTec AD)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch

from ...backends.clip import ClipBackbone
from ...prompt_learning import PromptTrainer, TrainOptions
from .model import INPUT_SIZE, GenClip, GenClipSettings

PROMPTS_FILE = "genclip_prompts.pt"


@dataclass(frozen=True)
class GenClipArchitecture:
    """GenCLIP's own training choices beside the shared TrainOptions."""

    layers: tuple[int, ...] = ()  # empty: §4.1's four evenly spaced layers (6, 12, 18, 24 of ViT-L/14)
    input_size: int = INPUT_SIZE


def train(options: TrainOptions, architecture: GenClipArchitecture = GenClipArchitecture(),
          note: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    """Train (or resume training of) GenCLIP's prompts with Adam (B.4); returns the prompt file and this run's per-step losses."""
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    model = GenClip(backbone, GenClipSettings.for_backbone(backbone, architecture.layers, architecture.input_size))
    optimizer = torch.optim.Adam(model.prompts.parameters(), lr=options.learning_rate)
    path, history = PromptTrainer(model, optimizer, options, PROMPTS_FILE, note).run()
    model.eval()
    return path, history
