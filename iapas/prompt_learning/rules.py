"""Where AnomalyCLIP and FAPrompt follow their authors' code rather than the paper or iapas's default.

One frozen value read from the config's `clip_methods.anomalyclip_*` / `faprompt_*` settings: the
`official` recipe sets each to what zqhang/AnomalyCLIP and mala-lab/FAPrompt do (see
resources/recipes/official.toml, which cites the file behind each), the default recipe keeps
iapas's choices. The models and their training read these rules; nothing else changes with them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptRules:
    """The rule of each point where the authors' code and iapas's default differ (defaults: iapas's)."""

    focal: str = "binary"  # binary | two-class (loss.py FocalLoss with label smoothing 1e-5)
    deep_prompts: str = "fp32"  # fp32 | fp16 (deep text prompts rounded to half precision, as AnomalyCLIP_lib does)
    input_resize: str = "float"  # float (antialiased torch bicubic) | pil-uint8 (PIL bicubic of the uint8 image)
    train_masks: str = "nearest"  # nearest | bilinear (PIL bilinear to the input size, then > 0.5)
    train_precision: str = "auto"  # auto (bf16 autocast on a GPU) | fp32
    prior_patches: str = "top"  # FAPrompt's DAP: top (paper Eq. 6) | first (the official train.py/test.py)

    @classmethod
    def from_config(cls, clip_methods) -> "PromptRules":
        """The rules a config's `clip_methods` section sets (validated by iapas.config)."""
        return cls(clip_methods.anomalyclip_focal, clip_methods.anomalyclip_deep_prompts,
                   clip_methods.anomalyclip_input_resize, clip_methods.anomalyclip_train_masks,
                   clip_methods.anomalyclip_train_precision, clip_methods.faprompt_prior_patches)


