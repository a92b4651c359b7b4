"""AdaCLIP (Cao et al., ECCV 2024): hybrid learnable prompts on a frozen CLIP.

`model.py` holds the prompted model, `train.py` its training on an auxiliary labelled dataset.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ...config import Config

if TYPE_CHECKING:
    from ..base import Method


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """AdaCLIP with trained prompts (the config's, or the weights dir's) on the config's CLIP."""
    from ...backends.clip import backbone_for_config
    from .model import AdaClip

    prompts = config.clip_methods.adaclip_prompts or str(Path(config.weights_dir) / "adaclip" / "adaclip_prompts.pt")
    return AdaClip.load(prompts, backbone_for_config(config))
