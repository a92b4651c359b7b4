"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic prompt learning for zero-shot anomaly detection.

`model.py` holds the prompted model (and reads AnomalyCLIP's released checkpoints), `train.py` its
training on an auxiliary labelled dataset.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ...config import Config

if TYPE_CHECKING:
    from ..base import Method


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """AnomalyCLIP with trained prompts (`--prompts`, or the weights dir's) on the config's CLIP."""
    from ...backends.clip import backbone_for_config
    from ...prompt_learning.rules import PromptRules
    from .model import PROMPTS_FILE, AnomalyClip

    prompts = config.clip_methods.prompts or str(Path(config.weights_dir) / "anomalyclip" / PROMPTS_FILE)
    return AnomalyClip.load(prompts, backbone_for_config(config), PromptRules.from_config(config.clip_methods))
