"""GenCLIP (Kim et al., 2025, "GenCLIP: Generalizing CLIP Prompts for Zero-shot Anomaly Detection").

General query prompts (GQPs) augmented by multi-layer vision prompts (MVPs) from ViT layers 6, 12, 18,
24; a vision-enhanced branch (class name after class-name filtering) and a query-only branch ("object")
combined with alpha 0.8, Gaussian smoothing sigma 9, and an image score from the top 500 / 2500 map
values. The authors released no code: `model.py` (prompts, maps, checkpoints), `prompts.py` (prompt
layout, CNF), `scoring.py` (Eq. 8-10) and `train.py` follow the paper, citing it rule by rule. Example::

    from iapas.backends.clip import ClipBackbone
    from iapas.methods.genclip import GenClip

    genclip = GenClip.load("ckpt/genclip_prompts.pt", ClipBackbone("weights/clip-vit-large-patch14-336"))
    genclip.prepare("pcb2", [], "object", Path("."))  # the class name; CNF turns it into "pcb" or "object"
    result = genclip.segment(rgb_image)  # result.anomaly_map in [0, 1], result.image_score (Eq. 10)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ...config import Config
from .model import GenClip, GenClipSettings
from .train import GenClipArchitecture, train

if TYPE_CHECKING:
    from ..base import Method

PREFERRED_CLIPS = ("clip-vit-l-14-336",)  # §4.1: OpenAI's ViT-L-14-336


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """GenCLIP with trained prompts (the config's, or the weights dir's) on the config's CLIP, else ViT-L-14-336 when present."""
    from ...backends.clip import backbone_preferring

    prompts = config.clip_methods.genclip_prompts or str(Path(config.weights_dir) / "genclip" / "genclip_prompts.pt")
    return GenClip.load(prompts, backbone_preferring(config, PREFERRED_CLIPS))


__all__ = ["GenClip", "GenClipArchitecture", "GenClipSettings", "build", "train"]
