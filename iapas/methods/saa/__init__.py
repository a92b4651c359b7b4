"""SAA+ (Cao et al., "Segment Any Anomaly without Training via Hybrid Prompt Regularization", arXiv 2305.10724).

Follows github caoyunkang/Segment-Any-Anomaly (`SAA/model.py`, `SAA/modelinet.py`, `SAA/prompts/`, `eval_SAA.py`),
rule by rule, on iapas's Grounding DINO and SAM backends: `prompts.py` (hybrid prompts, data in
iapas/resources/saa/), `rules.py` (box filtering, rescoring, confidence ranking), `saliency.py` (the
wide_resnet50_2 self-similarity prompt), `model.py` (the method). docs/methods/saa.md lists every rule and where
iapas's run differs. Training-free. Example::

    from iapas.methods import METHODS
    from iapas.config import Config

    saa = METHODS.get("saa")(Config(weights_dir="weights"), ())
    saa.use_dataset("mvtec"); saa.prepare("bottle", [], "object", out_dir)
    result = saa.segment(rgb_image)      # map at the image's size, in [0, 1]
    upstream = saa.official_map(rgb_image)  # upstream's 400 x 400 map, its own scale
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ...config import Config
from .model import SaaPlus
from .prompts import SaaPrompts, prompts_for
from .saliency import SaliencyNet

if TYPE_CHECKING:
    from ..base import Method


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """SAA+ on the config's (else the weights dir's) Grounding DINO, SAM and wide_resnet50_2 saliency weights.

    Its thresholds are its own (eval_SAA.py: 0.1 and 0.1), not the IAP-AS detection settings.
    """
    from ...backends.base import load_segmenter, quiet_loading, warn_if_demo
    from ...backends.grounding_dino import HFGroundingDino
    from ...device import resolve_device
    from ...weights.manifest import chosen_or_found, find_weights

    device = resolve_device(config.device)
    detector_path = chosen_or_found("detector", config.detection.weights, config.weights_dir, "grounding-dino")
    segmenter_path = chosen_or_found("segmenter", config.masking.weights, config.weights_dir, "sam")
    _, saliency_path = find_weights("saa-saliency", config.weights_dir)
    warn_if_demo(detector_path)
    with quiet_loading():
        detector = HFGroundingDino(detector_path, device)  # SAA+ reads Grounding DINO's raw token probabilities
    segmenter = load_segmenter(config.masking.backend, segmenter_path, device)
    return SaaPlus(detector, segmenter, SaliencyNet(saliency_path, device))


__all__ = ["SaaPlus", "SaaPrompts", "SaliencyNet", "build", "prompts_for"]
