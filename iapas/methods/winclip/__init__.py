"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023): zero-/few-shot windowed CLIP with a compositional prompt ensemble.

The authors released no code; two reimplementations differ and both are here, rule by rule
(`variants.py`): caoyunkang/WinClip, which IAP-AS's Table 1 ran (default), and anomalib's.
`prompts.py` holds their prompt ensembles, `windows.py` the window embeddings, `model.py` the method.
Training-free. Example::

    from iapas.backends.clip import ClipBackbone
    from iapas.methods.winclip import WinClip

    winclip = WinClip(ClipBackbone("weights/ViT-B-16-plus-240.pt"), "metal_nut", variant="caoyunkang")
    winclip.set_references(normal_rgb_images)  # optional: WinCLIP+ with K normal images
    result = winclip.segment(rgb_image)  # result.anomaly_map, result.image_score
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ...config import Config
from .model import WinClip

if TYPE_CHECKING:
    from ..base import Method

# Manifest entries each variant prefers, when the config names no CLIP: caoyunkang eval_WinCLIP.py --backbone
# ViT-B-16-plus-240 --pretrained_dataset laion400m_e32; anomalib torch_model.py BACKBONE, PRETRAINED = laion400m_e31.
DEFAULT_CLIPS = {
    "caoyunkang": ("clip-vit-b-16-plus-240",),
    "anomalib": ("clip-vit-b-16-plus-240-e31", "clip-vit-b-16-plus-240"),
}


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """WinCLIP on the config's CLIP, else the variant's ViT-B-16-plus-240 when the weights dir has it, else the first CLIP found."""
    from ...backends.clip import backbone_preferring

    options = config.clip_methods
    return WinClip(
        backbone_preferring(config, DEFAULT_CLIPS.get(options.winclip_variant, ())), variant=options.winclip_variant, scales=tuple(options.winclip_scales),
        shots=options.shots, reference_dir=Path(options.reference_images) if options.reference_images else None,
        seed=config.calibration.seed,
    )


__all__ = ["DEFAULT_CLIPS", "WinClip", "build"]
