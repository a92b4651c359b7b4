"""MuSc (Li et al., ICLR 2024, arXiv 2401.16753; official code github xrli-U/MuSc): zero-shot without prompts.

The unlabelled images of a set score each other: patch features of four ViT blocks are aggregated over
r x r neighbourhoods (LNAMD, r = 1, 3, 5), each patch's anomaly score is the mean of its lowest 30 % of
nearest-patch distances to the other images (MSM), and image scores are re-scored over image-level
neighbourhoods of class-token similarity (RsCIN). `scoring.py` holds the three modules, `model.py` the method.
A score depends on the whole set: `iapas segment FOLDER` scores the folder together, `iapas eval` each
category's test set, and the Python API takes a list. Example::

    from iapas.backends.clip import ClipBackbone
    from iapas.methods.musc.model import ClipFeatures, MuSc

    musc = MuSc(ClipFeatures(ClipBackbone("weights/clip-vit-large-patch14-336")))
    results = musc.segment_set(rgb_images)  # at least 5 images; results[i].anomaly_map, .image_score

See Also: docs/methods/musc.md (settings, reported numbers, what was chosen where the source is silent).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ...config import Config
    from .model import MuSc

# configs/musc.yaml: backbone ViT-L-14-336 (openai) at 518 px
DEFAULT_CLIPS = ("clip-vit-l-14-336",)
MIN_SET_SIZE = 5  # model.min_set_size() with the reference's 0 to 0.3 interval (checked by the tests)


def build(config: "Config", ablate: Sequence[str]) -> "MuSc":
    """MuSc on the configured backbone: CLIP (the config's, else ViT-L-14-336 when present, else any) or DINOv2."""
    from ...errors import ConfigError
    from .model import ClipFeatures, DinoFeatures, MuSc

    options = config.musc
    if options.backbone == "clip":
        from ...backends.clip import backbone_preferring

        features = ClipFeatures(backbone_preferring(config, DEFAULT_CLIPS))
    elif options.backbone == "dinov2":
        from ...backends.dinov2 import dinov2_for_config

        features = DinoFeatures(dinov2_for_config(options.weights, config))
    else:
        raise ConfigError(f"musc.backbone must be clip or dinov2, got {options.backbone!r}")
    return MuSc(features, degrees=options.degrees, layers=options.layers, size=options.image_size, divide=options.divide,
                neighbours=tuple(options.rscin) or None, batch_size=config.batch_size if config.batch_size > 1 else 4)


build.min_set_size = MIN_SET_SIZE  # type: ignore[attr-defined]  # read by `iapas segment`/`eval` without loading a model

__all__ = ["DEFAULT_CLIPS", "MIN_SET_SIZE", "build"]
