"""AdaCLIP (Cao et al., ECCV 2024): hybrid learnable prompts on a frozen CLIP, as its official code does.

`model.py` holds the model, `hsf.py` its image score, `text.py` its text prompts, `checkpoint.py` our
checkpoints and the official released ones, `train.py` its training on auxiliary datasets.
Paper: https://arxiv.org/abs/2407.15795; code: https://github.com/caoyunkang/AdaCLIP.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ...config import Config

if TYPE_CHECKING:
    from ...backends.clip import ClipBackbone
    from ..base import Method

TRAINED_PROMPTS = Path("adaclip") / "adaclip_prompts.pt"  # where `iapas train adaclip -o <weights>/adaclip` writes
RELEASED_ROLE = "adaclip"  # manifest role of the official released checkpoints
BACKBONE_ENTRY = "clip-vit-l-14-336"  # the CLIP every released checkpoint was trained on


def prompts_path(config: Config) -> Path:
    """The configured checkpoint (a path or a manifest name), else our trained one, else a released one found."""
    from ...errors import WeightsError
    from ...weights.manifest import entries_for, is_present

    weights_dir = Path(config.weights_dir)
    released = entries_for(RELEASED_ROLE)
    chosen = config.clip_methods.adaclip_prompts
    if chosen:
        named = next((entry for entry in released if entry.name == chosen), None)
        path = named.location(weights_dir) if named and not Path(chosen).exists() else Path(chosen)
        if not path.is_file():
            source = f"; get it from {named.source}" if named else ""
            raise WeightsError(f"AdaCLIP weights not found: {path}{source}")
        return path
    trained = weights_dir / TRAINED_PROMPTS
    if trained.is_file():
        return trained
    present = next((entry.location(weights_dir) for entry in released if is_present(entry, weights_dir)), None)
    if present is None:
        raise WeightsError(f"no AdaCLIP weights in {weights_dir}/: train them (`iapas train adaclip -o {weights_dir / 'adaclip'}`) "
                           f"or put a released one at {released[0].location(weights_dir)} (`iapas weights list`; "
                           "source: the hub mirror cubert-gmbh/adaclip), or pass --adaclip-prompts")
    return present


def adaclip_backbone(config: Config) -> "ClipBackbone":
    """The configured CLIP, else ViT-L-14-336 when present (the released checkpoints need it), else the first CLIP found."""
    from ...backends.clip import backbone_for_config, configured_backbone
    from ...weights.manifest import is_present, load_manifest

    if not config.clip_methods.weights:
        for entry in load_manifest():
            if entry.name == BACKBONE_ENTRY and is_present(entry, Path(config.weights_dir)):
                return configured_backbone(entry.location(Path(config.weights_dir)), config)
    return backbone_for_config(config)


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """AdaCLIP with trained or released weights on the config's CLIP."""
    from .model import AdaClip

    rules = config.clip_methods
    return AdaClip.load(prompts_path(config), adaclip_backbone(config), rules.adaclip_image_size,
                        resize=rules.adaclip_resize, prompt_precision=rules.adaclip_prompt_precision)
