"""AdaCLIP's architecture settings and constants: what the model, its checkpoints and its trainer share.

They sit apart from the model so the checkpoint reader needs no model import (model -> checkpoint, one way).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ...errors import ConfigError
from ...prompt_learning.vision import evenly_spaced_layers

if TYPE_CHECKING:
    from ...backends.clip import ClipBackbone

INPUT_SIZE = 518  # caoyunkang/AdaCLIP train.py / test.py --image_size (37 x 37 patches on ViT-L-14-336)
PROMPT_DEPTH = 4  # train.py --prompting_depth
PROMPT_LENGTH = 5  # train.py --prompting_length
LOGIT_SCALE = 100.0  # method/adaclip.py `visual_text_similarity`: 100 x cosine, not CLIP's learned scale
MAP_SIGMA = 4.0  # method/trainer.py `evaluation`: gaussian_filter(sigma=4)
STATIC_STD = 0.02  # method/adaclip.py `PromptLayer`: static prompts ~ N(0, 0.02)
DEFAULT_CLASS = "object"


def check_input_size(size: int, backbone: ClipBackbone) -> int:
    """`size` when it is a positive multiple of the CLIP's patch size, else a one-line ConfigError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % backbone.patch_size:
        raise ConfigError(f"AdaCLIP input size must be a multiple of the CLIP's patch size {backbone.patch_size}, got {size!r}")
    return size


def default_layers(depth: int) -> tuple[int, ...]:
    """Four evenly spaced feature layers ending at the last: 6, 12, 18, 24 for a 24-layer ViT (train.py `substage`)."""
    return evenly_spaced_layers(depth)


@dataclass(frozen=True)
class AdaClipSettings:
    """Architecture of the learned parts and the input size; stored in every checkpoint of ours."""

    layers: tuple[int, ...]
    prompt_length: int = PROMPT_LENGTH
    prompt_depth: int = PROMPT_DEPTH
    image_size: int = INPUT_SIZE

    @classmethod
    def for_backbone(cls, backbone: ClipBackbone, layers: Sequence[int] = (), prompt_length: int = PROMPT_LENGTH,
                     prompt_depth: int = 0, image_size: int = INPUT_SIZE) -> "AdaClipSettings":
        """Settings that fit the backbone: four evenly spaced layers and AdaCLIP's depth, capped by a shallow CLIP."""
        depth = prompt_depth or min(PROMPT_DEPTH, backbone.depth, backbone.text_depth)
        return cls(tuple(layers) or default_layers(backbone.depth), prompt_length, depth, image_size)
