"""HEPE (Cai et al., IJCAI 2025, "Towards VLM-based Hybrid Explainable Prompt Enhancement for Zero-Shot IAD").

AdaCLIP's prompted CLIP (ViT-L/14@336, layers 6, 12, 18, 24; `iapas.methods.adaclip`) with two kinds of
generated prompts: text prompts written by a two-step MLLM/LLM agent (`agent.py`) and attention prompts
from DINOv2 ViT-S through anomaly feature selection (`afs.py`), merged in `model.py`; `train.py` trains it
(Eq. 2-4, 5 epochs, lr 0.01). No code was released: the paper is the reference, cited rule by rule;
docs/methods/hepe.md lists every choice the paper leaves open.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ...config import Config

if TYPE_CHECKING:
    from ..base import Method

# the paper's ablations (Table 2: text prompts, VFM, AFS; Table 3: anti-false-alarm constraint, normal image)
ABLATIONS = ("text", "vfm", "afs", "anti-false-alarm", "normal-image")


def parts_and_agent_settings(ablate: Sequence[str]):
    """HepeParts and AgentSettings with the named ablations switched off; a one-line ConfigError for an unknown one."""
    from ...errors import ConfigError
    from .agent import AgentSettings
    from .model import HepeParts

    unknown = [name for name in ablate if name not in ABLATIONS]
    if unknown:
        raise ConfigError(f"HEPE cannot ablate {unknown[0]!r}; it ablates {', '.join(ABLATIONS)}")
    parts = HepeParts(text_prompts="text" not in ablate, vfm="vfm" not in ablate, afs="afs" not in ablate)
    return parts, AgentSettings(anti_false_alarm="anti-false-alarm" not in ablate, normal_image="normal-image" not in ablate)


def prompts_path(config: Config) -> Path:
    """--prompts, else <weights_dir>/hepe/hepe_prompts.pt (where `iapas train hepe -o <weights>/hepe` writes)."""
    from .model import PROMPTS_FILE

    return Path(config.clip_methods.prompts or Path(config.weights_dir) / "hepe" / PROMPTS_FILE)


def build(config: Config, ablate: Sequence[str]) -> "Method":
    """HEPE with trained weights on AdaCLIP's CLIP and the configured DINOv2; the agent when an MLLM is configured."""
    from dataclasses import replace

    from ...images import collect_inputs
    from ..adaclip import adaclip_backbone
    from .agent import agent_for_config
    from .model import Hepe

    parts, settings = parts_and_agent_settings(ablate)
    rules = config.clip_methods
    settings = replace(settings, version=rules.hepe_prompt_version)
    agent = agent_for_config(config, settings) if parts.text_prompts else None
    if parts.text_prompts and agent is None:
        print("iapas: hepe: no MLLM configured (--mllm-url/--mllm-model): running with AdaCLIP's fixed text prompts only",
              file=sys.stderr)
    dinov2 = None
    if parts.vfm:
        from ...backends.dinov2 import dinov2_for_config
        from ...errors import WeightsError

        try:
            dinov2 = dinov2_for_config(rules.hepe_dinov2, config)
        except WeightsError as error:  # say what HEPE needs it for, and the way round it
            raise WeightsError(f"{error}; HEPE's attention prompts need DINOv2 ViT-S (facebook/dinov2-small as a "
                               "transformers directory): give --dinov2 DIR, or in eval --ablate vfm") from None
    references = [image for image, _ in collect_inputs([rules.reference_images])] if rules.reference_images else []
    return Hepe.load(prompts_path(config), adaclip_backbone(config), dinov2, rules.adaclip_image_size, parts=parts,
                     logit_scale=rules.hepe_logit_scale, agent=agent, descriptions=rules.hepe_descriptions,
                     reference_images=references, seed=config.calibration.seed, resize=rules.adaclip_resize,
                     prompt_precision=rules.adaclip_prompt_precision)
