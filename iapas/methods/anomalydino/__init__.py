"""AnomalyDINO (Damm, Laszkiewicz, Lederer, Fischer, WACV 2025, arXiv 2405.14529; code github dammsi/AnomalyDINO).

Few-shot: the normed last-block DINOv2 (ViT-S/14) patch features of K normal references form a memory; each
test patch's anomaly score is its cosine distance to the nearest memory patch, the image score the mean of
the top 1 % of them, the map those distances resized and smoothed (sigma 4). References are augmented by
rotations and object backgrounds masked as the authors' per-category tables say (`preprocess.py`).
`model.py` holds the method. Example::

    from iapas.backends.dinov2 import Dinov2Backbone
    from iapas.methods.anomalydino.model import AnomalyDino

    method = AnomalyDino(Dinov2Backbone("weights/dinov2-small"), shots=1, category="screw", dataset="mvtec")
    method.set_references([normal_rgb])
    result = method.segment(rgb_image)  # result.anomaly_map, result.image_score

See Also: docs/methods/anomalydino.md (how anomalib 2.7's AnomalyDINO differs).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ...config import Config
    from .model import AnomalyDino


def build(config: "Config", ablate: Sequence[str]) -> "AnomalyDino":
    """AnomalyDINO on the config's DINOv2 (else the manifest's dinov2-small), K = --shots (0: the authors' default, 1)."""
    from ...backends.dinov2 import dinov2_for_config
    from .model import AnomalyDino

    options, shared = config.anomalydino, config.clip_methods
    return AnomalyDino(dinov2_for_config(options.weights, config), shots=shared.shots or 1,
                       reference_dir=Path(shared.reference_images) if shared.reference_images else None,
                       resolution=options.resolution, preprocess=options.preprocess, neighbours=options.neighbours)


__all__ = ["build"]
