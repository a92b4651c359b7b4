"""FAPrompt (Zhu et al., 2024): fine-grained abnormality prompts for zero-shot anomaly detection, on AnomalyCLIP's base.

`model.py` holds the prompted model (CAP, DAP, Eq. 9), `train.py` its losses and training.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ...config import Config

if TYPE_CHECKING:
    from ..base import Method


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """FAPrompt with trained prompts (`--prompts`, or the weights dir's) on the config's CLIP."""
    from ...backends.clip import backbone_for_config
    from ...prompt_learning.rules import PromptRules
    from .model import PROMPTS_FILE, FAPrompt

    prompts = config.clip_methods.prompts or str(Path(config.weights_dir) / "faprompt" / PROMPTS_FILE)
    return FAPrompt.load(prompts, backbone_for_config(config), PromptRules.from_config(config.clip_methods))
