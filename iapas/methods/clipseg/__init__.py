"""CLIPSeg (Lüddecke and Ecker, CVPR 2022, arXiv 2112.10003) as a zero-shot anomaly segmenter with fixed prompts.

The IAP-AS paper's Table 1 compares with CLIPSeg run with "fixed prompts"; `model.py` says which ones and how
their maps are merged (docs/methods/clipseg.md). Weights: transformers' `CLIPSegForImageSegmentation` from a
local directory (manifest entry `clipseg-rd64-refined`, hub repo CIDAS/clipseg-rd64-refined). Training-free.
Example::

    from iapas.methods.clipseg import ClipSeg

    clipseg = ClipSeg("weights/clipseg-rd64-refined")
    clipseg.prepare("metal_nut", [], "object", out_dir)
    result = clipseg.segment(rgb_image)  # result.anomaly_map: (H, W) in [0, 1]
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ...config import Config
from .model import DEFAULT_PROMPTS, ClipSeg, merge_maps, prompts_for

if TYPE_CHECKING:
    from ..base import Method


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """CLIPSeg from the first `clipseg` entry of the manifest present in the weights dir."""
    from ...device import resolve_device
    from ...weights.manifest import find_weights

    _, path = find_weights("clipseg", config.weights_dir)
    return ClipSeg(path, resolve_device(config.device))


__all__ = ["DEFAULT_PROMPTS", "ClipSeg", "build", "merge_maps", "prompts_for"]
