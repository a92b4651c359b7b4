"""Training HEPE (paper §4, §5.1): AdaCLIP's trainer and loss with HEPE's model, 5 epochs at lr 0.01.

Eq. 2-4 (Dice + focal) are the losses AdaCLIP's trainer already sums (`adaclip.train.adaclip_loss`: focal
on the HSF image score, per layer focal + Dice on the anomalous and the normal map); HEPE builds on it
and gives no other weighting. The learned parts are AdaCLIP's plus the attention branch; CLIP and DINOv2
stay frozen. Training images get AdaCLIP's fixed text prompts (class name in states and templates): the
paper does not say where the training images' descriptions come from, and the learned tensors do not
depend on the sentences, so no MLLM is asked during training (our choice, docs/methods/hepe.md).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ...backends.clip import ClipBackbone
from ...prompt_learning import PromptTrainer, TrainOptions
from ..adaclip.model import INPUT_SIZE, PROMPT_LENGTH, AdaClipSettings, check_input_size
from ..adaclip.train import BETAS, AdaClipBatches, auxiliary_samples
from .model import EQ1_LOGIT_SCALE, PROMPTS_FILE, Hepe, HepeParts

TRAINED_ABLATIONS = ("vfm", "afs")  # Table 2's rows that change what is learned


@dataclass(frozen=True)
class HepeArchitecture:
    """HEPE's own training choices beside the shared TrainOptions."""

    layers: tuple[int, ...] = ()  # empty: 6, 12, 18, 24 on ViT-L/14 (§5.1), four evenly spaced on others
    image_size: int = INPUT_SIZE  # AdaCLIP's 518 (the paper gives none)
    dinov2: Path | None = None  # DINOv2 ViT-S directory (§5.1)
    ablate: tuple[str, ...] = ()  # vfm, afs: train Table 2's rows without them
    logit_scale: float = EQ1_LOGIT_SCALE
    resize: str = "antialiased"
    prompt_precision: str = "fp32"


def train_hepe(options: TrainOptions, architecture: HepeArchitecture = HepeArchitecture(),
               note: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
               sources: Sequence[tuple[str, Path]] = ()):
    """Train (or resume) HEPE on `sources` (default: the options' one dataset); returns the file and the losses."""
    from . import parts_and_agent_settings

    from ...errors import ConfigError

    if set(architecture.ablate) - set(TRAINED_ABLATIONS):
        raise ConfigError(f"`iapas train hepe --ablate` takes {', '.join(TRAINED_ABLATIONS)} (the learned parts); "
                          f"got {', '.join(architecture.ablate)}; the agent's ablations apply at `iapas eval`")
    parts, _ = parts_and_agent_settings(architecture.ablate)
    parts = HepeParts(text_prompts=False, vfm=parts.vfm, afs=parts.afs)  # training uses the fixed prompts (see above)
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    dinov2 = None
    if parts.vfm:
        from ...backends.dinov2 import Dinov2Backbone
        from ...errors import WeightsError

        if architecture.dinov2 is None:
            raise WeightsError("HEPE training needs DINOv2 ViT-S: --dinov2 DIR (or --ablate vfm)")
        dinov2 = Dinov2Backbone(architecture.dinov2, options.device)
    settings = AdaClipSettings.for_backbone(backbone, architecture.layers, PROMPT_LENGTH, 0,
                                            check_input_size(architecture.image_size, backbone))
    model = Hepe(backbone, dinov2, settings, parts=parts, logit_scale=architecture.logit_scale, resize=architecture.resize,
                 prompt_precision=architecture.prompt_precision)
    optimizer = torch.optim.AdamW(model.prompts.parameters(), lr=options.learning_rate, betas=BETAS)  # AdaCLIP's optimiser
    samples, rates = auxiliary_samples(sources or [(options.dataset, options.root)], options.limit)
    path, history = PromptTrainer(model, optimizer, options, PROMPTS_FILE, note,
                                  batch_loader=AdaClipBatches(model, samples, rates)).run(samples)
    model.eval()
    return path, history
