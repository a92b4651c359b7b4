"""AnomalyCLIP: object-agnostic learned prompts, deep text prompt tuning and V-V attention on a frozen CLIP.

Two sentences, "[12 learned tokens] object." and "[12 learned tokens] damaged object.", are encoded
with 4 further learned tokens replacing positions 1-4 in text layers 2-9. Images go in at 518 px;
patch tokens of the V-V path (from layer 6 on) at the map layers (iapas's training: 6, 12, 18, 24; a
released checkpoint: 24 only, as the official train.sh/test.sh ran it) are compared with the two text
embeddings (cosine / 0.07, softmax), one map per layer, upsampled and averaged, then smoothed with a
Gaussian of sigma 4. The image score is the abnormal softmax of the class token
(from the unchanged path) against the two texts.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...errors import WeightsError
from ..batching import BatchedMethod, timed
from ...prompt_learning import gaussian_smooth
from ...prompt_learning.checkpoints import (load_learned, load_prompt_learner, official_sentence_state, save_prompt_learner,
                                            unused_projections)
from ...prompt_learning.rules import PromptRules
from ...prompt_learning.text_prompts import deep_prompts, encode_prompted, fill_slots, learned_tokens, slot_sentences
from ...prompt_learning.vision import (SIMILARITY_TEMPERATURE, ReferenceInput, encode_dual_path, evenly_spaced_layers, input_size_for,
                                       tokens_at, two_class_probabilities, upsample_patches,
                                       vv_start_for)
from ...types import Boxes, Masks, Result

NORMAL_WORDS = "object."  # zqhang/AnomalyCLIP prompt_ensemble.py: state "{}" with the class name "object"
ABNORMAL_WORDS = "damaged object."  # ... and state "damaged {}"
PROMPT_LENGTH = 12  # train.py --n_ctx 12: learned tokens before the words
TEXT_DEPTH = 9  # train.py --depth 9: learned tokens in text layers 1-9 (2-9 beyond the sentence's own)
TEXT_LENGTH = 4  # train.py --t_n_ctx 4: learned tokens per deeper layer
SMOOTHING_SIGMA = 4.0  # test.py --sigma 4
PROMPTS_FILE = "anomalyclip_prompts.pt"
OFFICIAL_SLOT_WORD = "X"  # prompt_ensemble.py: the learned slots are written "X X ... X" before tokenising
RELEASED_HINT = ("train them with `iapas train anomalyclip`, or pass AnomalyCLIP's released "
                 "checkpoints/9_12_4_multiscale_visa/epoch_15.pth with --prompts")


@dataclass(frozen=True)
class AnomalyClipSettings:
    """Shapes of the learned prompts and the test-time choices; stored in every iapas checkpoint."""

    layers: tuple[int, ...]  # ViT layers whose patch tokens make maps (test.py --features_list; released files: 24)
    image_size: int  # input size (518 for ViT-L/14-336)
    vv_from: int  # first layer of the V-V path (6 of 24)
    prompt_length: int = PROMPT_LENGTH
    text_depth: int = TEXT_DEPTH
    text_length: int = TEXT_LENGTH
    sigma: float = SMOOTHING_SIGMA

    @classmethod
    def for_backbone(cls, backbone: ClipBackbone, **chosen) -> "AnomalyClipSettings":
        """The reference's settings, scaled to a smaller CLIP where they would not fit; `chosen` (non-empty values) wins."""
        defaults = cls(evenly_spaced_layers(backbone.depth), input_size_for(backbone.image_size, backbone.patch_size),
                       vv_start_for(backbone.depth), text_depth=min(TEXT_DEPTH, backbone.text_depth))
        return replace(defaults, **{key: value for key, value in chosen.items() if value})

    def record(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_record(cls, record: dict) -> "AnomalyClipSettings":
        return cls(**{**record, "layers": tuple(record["layers"])})


class AnomalyClipPrompts(torch.nn.Module):
    """The learned tensors, named as zqhang/AnomalyCLIP prompt_ensemble.py AnomalyCLIP_PromptLearner names them."""

    def __init__(self, settings: AnomalyClipSettings, text_width: int) -> None:
        super().__init__()
        self.ctx_pos = learned_tokens(1, 1, settings.prompt_length, text_width)  # (classes, states, length, width)
        self.ctx_neg = learned_tokens(1, 1, settings.prompt_length, text_width)
        self.compound_prompts_text = deep_prompts(settings.text_depth, settings.text_length, text_width)

    @staticmethod
    def shapes_of(state: dict[str, torch.Tensor]) -> dict:
        """Prompt length, text depth and deep length read off a checkpoint's tensors (a released file has no record)."""
        deep = sorted(name for name in state if name.startswith("compound_prompts_text."))
        shapes = {"prompt_length": int(state["ctx_pos"].shape[-2]), "text_depth": len(deep) + 1}
        if deep:
            shapes["text_length"] = int(state[deep[0]].shape[0])
        return shapes


class AnomalyClip(BatchedMethod, ReferenceInput, torch.nn.Module):
    """Frozen CLIP + AnomalyCLIP's learned prompts -> per-layer two-class patch probabilities and an image score."""

    name = "anomalyclip"

    def __init__(self, backbone: ClipBackbone, settings: AnomalyClipSettings | None = None,
                 rules: PromptRules = PromptRules()) -> None:
        super().__init__()
        self.backbone = backbone
        self.rules = rules  # where the authors' code and iapas's default differ (the official recipe sets them)
        self.settings = settings = settings or AnomalyClipSettings.for_backbone(backbone)
        backbone.require_layers((*settings.layers, settings.vv_from))
        backbone.require_text_depth(settings.text_depth)
        width = int(backbone.clip.config.text_config.hidden_size)
        self.prompts = AnomalyClipPrompts(settings, width).to(backbone.device)
        embeddings, eos = slot_sentences(backbone, [(settings.prompt_length, NORMAL_WORDS),
                                                    (settings.prompt_length, ABNORMAL_WORDS)])
        self.register_buffer("sentences", embeddings, persistent=False)
        self.register_buffer("eos", eos, persistent=False)

    def text_features(self) -> torch.Tensor:
        """(2, E) unit embeddings of the normal and the abnormal prompt."""
        slots = torch.cat([self.prompts.ctx_pos[0], self.prompts.ctx_neg[0]])  # (2, length, width)
        filled = fill_slots(self.sentences, slots)
        return encode_prompted(self.backbone, filled, self.eos, self.prompts.compound_prompts_text,
                               half_deep=self.rules.deep_prompts == "fp16")

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Unit class embedding (B, E) and unit patch embeddings (B, g*g, E) of each map layer (frozen CLIP, no gradient)."""
        backbone = self.backbone
        with torch.no_grad():
            hidden, collected = encode_dual_path(backbone, tokens_at(backbone, pixels), self.settings.vv_from,
                                                 self.settings.layers)
            # AnomalyCLIP_lib/AnomalyCLIP.py VisionTransformer.forward returns x_ori[0] @ proj: the class token
            # is projected without the post-layernorm, unlike CLIP's own image embedding
            image = F.normalize(backbone.clip.visual_projection(hidden[:, 0]).float(), dim=-1)
            patches = [F.normalize(backbone.project(tokens[:, 1:]).float(), dim=-1) for tokens in collected]
        return image, patches

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, layers, g*g, 2) normal/abnormal patch probabilities and (B, 2) image logits."""
        text = self.text_features()
        image, patches = self.encode_image(pixels)
        probabilities = torch.stack([two_class_probabilities(layer, text) for layer in patches], dim=1)
        return probabilities, image @ text.t() / SIMILARITY_TEMPERATURE

    @torch.no_grad()
    def encode_batch(self, images: list[np.ndarray]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, float]]:
        """One prompted-CLIP forward over the batch: each image's (layers, g*g, 2) patch probabilities and (2,) image logits."""
        start = time.perf_counter()
        probabilities, logits = self(self.preprocess(images))
        return list(zip(probabilities, logits)), {"prompted_clip": time.perf_counter() - start}

    @torch.no_grad()
    def finish(self, image: np.ndarray, encoded: tuple[torch.Tensor, torch.Tensor], timings: dict[str, float]) -> Result:
        """Map at the input size, smoothed (sigma 4 px there, test.py), then resized to the image; image score from the class token."""
        start = time.perf_counter()
        probabilities, logits = encoded
        height, width = image.shape[:2]
        size = self.settings.image_size
        # test.py sums (p_abnormal + 1 - p_normal) / 2 = p_abnormal over the layers; the mean keeps the map in [0, 1]
        maps = torch.stack([upsample_patches(layer[None], size)[0, 1] for layer in probabilities])
        start = timed(timings, "prompted_clip", start)
        smoothed = torch.from_numpy(gaussian_smooth(maps.mean(0), self.settings.sigma))[None, None]
        heat = F.interpolate(smoothed, size=(height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
        score = float(logits.softmax(-1)[1])
        timed(timings, "smoothing", start)
        return Result(heat.numpy().astype(np.float32), Boxes.empty(), Masks.empty(height, width),
                      (NORMAL_WORDS, ABNORMAL_WORDS), timings, self.name, score)

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Nothing per category: the prompts are object-agnostic."""

    def loss(self, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (see `train.anomalyclip_loss`)."""
        from .train import anomalyclip_loss

        return anomalyclip_loss(self, pixels, masks, labels)

    def settings_record(self) -> dict:
        return self.settings.record()

    def official_state(self) -> dict[str, torch.Tensor]:
        """Every tensor zqhang/AnomalyCLIP's AnomalyCLIP_PromptLearner holds, so its test.py loads this strictly."""
        settings, width = self.settings, int(self.backbone.clip.config.text_config.hidden_size)
        slots = " ".join([OFFICIAL_SLOT_WORD] * settings.prompt_length)
        state = {name: tensor.detach().float().cpu() for name, tensor in self.prompts.state_dict().items()}
        state.update(unused_projections(settings.text_depth, width))
        state.update(official_sentence_state(self.backbone, "pos", f"{slots} {NORMAL_WORDS}", 1, settings.prompt_length))
        state.update(official_sentence_state(self.backbone, "neg", f"{slots} {ABNORMAL_WORDS}", 1, settings.prompt_length))
        return state

    def save(self, path: str | Path, extra: dict | None = None, layout: str = "iapas") -> Path:
        """The learned prompts in AnomalyCLIP's checkpoint layout, with iapas's settings beside them.

        layout "official" adds the frozen buffers and unused layers of the authors' prompt learner, so their
        test.py loads the file strictly; iapas reads both alike.
        """
        record = {"method": self.name, "settings": self.settings.record(), "clip": self.backbone.name, **(extra or {})}
        state = self.official_state() if layout == "official" else self.prompts.state_dict()
        return save_prompt_learner(path, state, record)

    @classmethod
    def load(cls, path: str | Path, backbone: ClipBackbone, rules: PromptRules = PromptRules()) -> "AnomalyClip":
        """Prompts from `save` or from AnomalyCLIP's own train.py (its released epoch_15.pth) on a frozen CLIP.

        A released file (no iapas record) maps the last layer only, as the official train.sh and test.sh
        (`--features_list 24`) trained and tested it; iapas's own files keep the layers they recorded.
        """
        state, record = load_prompt_learner(path, cls.name, RELEASED_HINT)
        try:
            if record:
                settings = AnomalyClipSettings.from_record(record["settings"])
            else:  # a released file: the shapes from its tensors, the test-time choices the official scripts'
                settings = AnomalyClipSettings.for_backbone(backbone, layers=(backbone.depth,),
                                                            **AnomalyClipPrompts.shapes_of(state))
        except (KeyError, TypeError, IndexError) as error:
            raise WeightsError(f"not an anomalyclip prompt checkpoint: {path} (no {error})") from None
        model = cls(backbone, settings, rules)
        load_learned(model.prompts, state, path, backbone.name)
        return model.eval()
