"""WinCLIP (Jeong et al., CVPR 2023): zero-shot windowed CLIP with a compositional prompt ensemble.

`model.py` holds the model. Training-free.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ...config import Config

if TYPE_CHECKING:
    from ..base import Method


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """WinCLIP on the config's CLIP."""
    from ...backends.clip import backbone_for_config
    from .model import WinClip

    return WinClip(backbone_for_config(config), scales=tuple(config.clip_methods.winclip_scales))
