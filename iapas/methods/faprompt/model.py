"""FAPrompt: fine-grained abnormality prompts (CAP) with a data-dependent abnormality prior (DAP), on AnomalyCLIP's base.

CAP: one normal prompt "[5 learned tokens] object." and 10 abnormality prompts "[the same 5 tokens]
[2 learned tokens of their own] damaged object.", whose embeddings are averaged into an abnormality
prototype and kept apart by an orthogonality loss. DAP: the 10 patches most similar to the
prototype (the paper; the official code feeds the first 10, `rules.prior_patches`) feed a prior network (one ReLU hidden layer) whose output is added to every abnormal
token, per image. Both the prompt-only and the prior-enabled prompts give a map; the test map is
their mean, smoothed with sigma 10, and the image score is Eq. 9.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

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
from ...prompt_learning.vision import (SIMILARITY_TEMPERATURE, ReferenceInput, encode_dual_path, input_size_for,
                                       tokens_at, two_class_probabilities, upsample_patches, vv_start_for)
from ...types import Boxes, Masks, Result

NORMAL_WORDS = "object."  # mala-lab/FAPrompt FAPrompt.py: "N N N N N object."
ABNORMAL_WORDS = "damaged object."  # ... "N N N N N A A damaged object."
NORMAL_LENGTH = 5  # paper Sec. 4.1 / App. B: learnable normal prompt length 5
ABNORMAL_LENGTH = 2  # ... 2 abnormal tokens per abnormality prompt
ABNORMALITY_PROMPTS = 10  # ... 10 fine-grained abnormality prompts
TOP_PATCHES = 10  # ... 10 patch tokens selected by DAP
PRIOR_HIDDEN_DIVISOR = 16  # App. B / FAPrompt.py patch_meta_net: hidden size (k x 768) / 16
TEXT_DEPTH = 9  # App. B: learnable tokens in the first 9 text-encoder layers
TEXT_LENGTH = 4  # ... 4 tokens per layer
SMOOTHING_SIGMA = 10.0  # FAPrompt test.py --sigma 10
PROMPTS_FILE = "faprompt_prompts.pt"
NORMAL_SLOT_WORD, ABNORMAL_SLOT_WORD = "N", "A"  # FAPrompt.py: the slots are written "N N N N N" and "A A" before tokenising


@dataclass(frozen=True)
class FAPromptSettings:
    """Shapes of the learned parts and the test-time choices; stored in every checkpoint."""

    image_size: int  # 518 for ViT-L/14-336 (App. B)
    vv_from: int  # V-V attention from layer 6 of 24 (App. B, as AnomalyCLIP)
    map_layer: int  # FAPrompt's AnomalyCLIP_lib returns the last layer's V-V tokens for the maps
    normal_length: int = NORMAL_LENGTH
    abnormal_length: int = ABNORMAL_LENGTH
    prompt_count: int = ABNORMALITY_PROMPTS
    top_k: int = TOP_PATCHES
    text_depth: int = TEXT_DEPTH
    text_length: int = TEXT_LENGTH
    sigma: float = SMOOTHING_SIGMA

    @classmethod
    def for_backbone(cls, backbone: ClipBackbone, **chosen) -> "FAPromptSettings":
        """The paper's settings, scaled to a smaller CLIP where they would not fit; `chosen` (non-empty values) wins."""
        defaults = cls(input_size_for(backbone.image_size, backbone.patch_size), vv_start_for(backbone.depth),
                       backbone.depth, text_depth=min(TEXT_DEPTH, backbone.text_depth))
        return replace(defaults, **{key: value for key, value in chosen.items() if value})


class FAPromptPrompts(torch.nn.Module):
    """The learned tensors, named as mala-lab/FAPrompt FAPrompt.py names them."""

    def __init__(self, settings: FAPromptSettings, text_width: int, embed_dim: int) -> None:
        super().__init__()
        self.ctx_pos = learned_tokens(1, 1, settings.normal_length, text_width)
        self.ctx_neg = learned_tokens(1, settings.prompt_count, settings.abnormal_length, text_width)
        self.compound_prompts_text = deep_prompts(settings.text_depth, settings.text_length, text_width)
        flat = embed_dim * settings.top_k
        self.patch_meta_net = torch.nn.Sequential(OrderedDict([
            ("linear1", torch.nn.Linear(flat, max(1, flat // PRIOR_HIDDEN_DIVISOR))),
            ("relu", torch.nn.ReLU()),
            ("linear2", torch.nn.Linear(max(1, flat // PRIOR_HIDDEN_DIVISOR), text_width)),
        ]))


class FAPromptOutputs(NamedTuple):
    """Everything one forward pass gives, for the test map, the image score and the training losses."""

    static: torch.Tensor  # (B, g*g, 2) probabilities against the prompt-only normal/abnormal embeddings
    prior: torch.Tensor  # (B, g*g, 2) probabilities against each image's prior-enabled embeddings
    image_logits: torch.Tensor  # (B, 2) class token against the prior-enabled embeddings, / 0.07
    score: torch.Tensor  # (B,) Eq. 9
    bias: torch.Tensor  # (B, text width) the abnormality prior added to the abnormal tokens
    abnormal: torch.Tensor  # (prompts, E) the prompt-only abnormality embeddings (orthogonality loss)


def top_patch_tokens(patches: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k, E) the patch embeddings with the k highest abnormal scores (B, N), highest first (DAP, Eq. 6)."""
    index = scores.topk(k, dim=1).indices
    return patches.gather(1, index[..., None].expand(-1, -1, patches.shape[-1]))


def first_patch_tokens(patches: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k, E) patches 0..k-1: what the official train.py and test.py feed the prior network.

    mala-lab/FAPrompt test.py computes the top-k indices (`pk_indx`) but gathers `patch_features[1:][i, k]`
    with the loop counter k, so the prior network always reads the first k patch tokens.
    """
    return patches[:, :k]


def orthogonality_loss(features: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of |cosine| between the abnormality prompt embeddings (P, E) (CAP, Eq. 4; FAPrompt train.py loss_ab)."""
    unit = F.normalize(features, dim=-1)
    cosine = unit @ unit.t()
    return cosine.triu(diagonal=1).abs().sum()


def image_score(text_probability: torch.Tensor, static_max: torch.Tensor, prior_max: torch.Tensor) -> torch.Tensor:
    """Eq. 9 as FAPrompt test.py computes it: 0.5 x (class-token score + (2 x max of the prompt-only map + max of the prior map) / 3)."""
    return 0.5 * (text_probability + (2 * static_max + prior_max) / 3)


class FAPrompt(BatchedMethod, ReferenceInput, torch.nn.Module):
    """Frozen CLIP + FAPrompt's learned prompts and prior network."""

    name = "faprompt"

    def __init__(self, backbone: ClipBackbone, settings: FAPromptSettings | None = None,
                 rules: PromptRules = PromptRules()) -> None:
        super().__init__()
        self.backbone = backbone
        self.rules = rules  # where the authors' code and the paper differ (the official recipe sets them)
        self.settings = settings = settings or FAPromptSettings.for_backbone(backbone)
        backbone.require_layers((settings.map_layer, settings.vv_from))
        backbone.require_text_depth(settings.text_depth)
        if settings.top_k > (settings.image_size // backbone.patch_size) ** 2:
            raise WeightsError(f"DAP's top {settings.top_k} patches exceed the {settings.image_size} px grid")
        width = int(backbone.clip.config.text_config.hidden_size)
        self.prompts = FAPromptPrompts(settings, width, backbone.embed_dim).to(backbone.device)
        abnormal_slots = settings.normal_length + settings.abnormal_length
        embeddings, eos = slot_sentences(backbone, [(settings.normal_length, NORMAL_WORDS)]
                                         + [(abnormal_slots, ABNORMAL_WORDS)] * settings.prompt_count)
        self.register_buffer("sentences", embeddings, persistent=False)
        self.register_buffer("eos", eos, persistent=False)

    def _encode(self, abnormal_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised normal (E,) and abnormality (G, P, E) embeddings for abnormal tokens (G, P, A, D)."""
        prompts, settings = self.prompts, self.settings
        groups = len(abnormal_tokens)
        normal = fill_slots(self.sentences[:1], prompts.ctx_pos[0])
        shared = prompts.ctx_pos[0].expand(groups * settings.prompt_count, -1, -1)  # compound: normal tokens first
        slots = torch.cat([shared, abnormal_tokens.reshape(groups * settings.prompt_count, settings.abnormal_length, -1)], 1)
        abnormal = fill_slots(self.sentences[1:].repeat(groups, 1, 1), slots)
        eos = torch.cat([self.eos[:1], self.eos[1:].repeat(groups)])
        features = encode_prompted(self.backbone, torch.cat([normal, abnormal]), eos, prompts.compound_prompts_text,
                                   normalize=False, half_deep=self.rules.deep_prompts == "fp16")
        return features[0], features[1:].view(groups, settings.prompt_count, -1)

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit class embedding (B, E) and unit patch embeddings (B, g*g, E) of the last layer's V-V path (no gradient)."""
        backbone = self.backbone
        with torch.no_grad():
            hidden, (tokens,) = encode_dual_path(backbone, tokens_at(backbone, pixels), self.settings.vv_from,
                                                 (self.settings.map_layer,))
            image = F.normalize(backbone.clip.visual_projection(hidden[:, 0]).float(), dim=-1)  # no post-norm, as AnomalyCLIP
            patches = F.normalize(backbone.project(tokens[:, 1:]).float(), dim=-1)
        return image, patches

    def forward(self, pixels: torch.Tensor) -> FAPromptOutputs:
        """Prompt-only and prior-enabled patch probabilities, image logits, Eq. 9 score, the prior and the abnormality embeddings."""
        image, patches = self.encode_image(pixels)
        normal, abnormal = self._encode(self.prompts.ctx_neg)
        prototype = torch.stack([normal, abnormal[0].mean(0)])  # FAPrompt train.py: mean of unnormalised embeddings
        static = two_class_probabilities(patches, F.normalize(prototype, dim=-1))
        if self.rules.prior_patches == "first":  # the official code's indexing
            selected = first_patch_tokens(patches, self.settings.top_k)
        else:  # the paper's Eq. 6
            selected = top_patch_tokens(patches, static[..., 1].detach(), self.settings.top_k)
        bias = self.prompts.patch_meta_net(selected.flatten(1))  # (B, text width), one prior per image
        tokens = self.prompts.ctx_neg[0][None] + bias[:, None, None]  # every abnormal token of every prompt
        _, prior_abnormal = self._encode(tokens)
        per_image = torch.stack([normal.expand(len(pixels), -1), prior_abnormal.mean(1)], dim=1)
        per_image = F.normalize(per_image, dim=-1)  # (B, 2, E)
        prior = two_class_probabilities(patches, per_image)
        logits = (image[:, None] @ per_image.transpose(1, 2))[:, 0] / SIMILARITY_TEMPERATURE
        score = image_score(logits.softmax(-1)[:, 1], static[..., 1].max(1).values, prior[..., 1].max(1).values)
        return FAPromptOutputs(static, prior, logits, score, bias, abnormal[0])

    @torch.no_grad()
    def encode_batch(self, images: list[np.ndarray]) -> tuple[list[tuple[torch.Tensor, ...]], dict[str, float]]:
        """One forward over the batch (each image keeps its own prior): per image its two (g*g, 2) maps and Eq. 9 score."""
        start = time.perf_counter()
        outputs = self(self.preprocess(images))
        return list(zip(outputs.static, outputs.prior, outputs.score)), {"prompted_clip": time.perf_counter() - start}

    @torch.no_grad()
    def finish(self, image: np.ndarray, encoded: tuple[torch.Tensor, ...], timings: dict[str, float]) -> Result:
        """Mean of the two abnormal maps at the input size (test.py), smoothed (sigma 10 px there), resized to the image."""
        start = time.perf_counter()
        static, prior, score = encoded
        height, width = image.shape[:2]
        size = self.settings.image_size
        # test.py: (p1 + 1 - p0 + p1' + 1 - p0') / 4, which for two-class softmaxes is the mean of the abnormal maps
        heat = 0.5 * (upsample_patches(static[None], size)[0, 1] + upsample_patches(prior[None], size)[0, 1])
        start = timed(timings, "prompted_clip", start)
        smoothed = torch.from_numpy(gaussian_smooth(heat, self.settings.sigma))[None, None]
        heat = F.interpolate(smoothed, size=(height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
        timed(timings, "smoothing", start)
        return Result(heat.numpy().astype(np.float32), Boxes.empty(), Masks.empty(height, width),
                      (NORMAL_WORDS, ABNORMAL_WORDS), timings, self.name, float(score))

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Nothing per category: the prompts are object-agnostic."""

    def loss(self, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (see `train.faprompt_loss`)."""
        from .train import faprompt_loss

        return faprompt_loss(self, pixels, masks, labels)

    def settings_record(self) -> dict:
        return asdict(self.settings)

    def official_state(self) -> dict[str, torch.Tensor]:
        """Every tensor mala-lab/FAPrompt's FAPrompt prompt learner holds, so its test.py loads this strictly."""
        settings, width = self.settings, int(self.backbone.clip.config.text_config.hidden_size)
        normal = " ".join([NORMAL_SLOT_WORD] * settings.normal_length)
        abnormal = " ".join([ABNORMAL_SLOT_WORD] * settings.abnormal_length)
        state = {name: tensor.detach().float().cpu() for name, tensor in self.prompts.state_dict().items()}
        state.update(unused_projections(settings.text_depth, width))
        state.update(official_sentence_state(self.backbone, "pos", f"{normal} {NORMAL_WORDS}", 1, settings.normal_length))
        state.update(official_sentence_state(self.backbone, "neg", f"{normal} {abnormal} {ABNORMAL_WORDS}", settings.prompt_count,
                                             settings.normal_length + settings.abnormal_length))
        return state

    def save(self, path: str | Path, extra: dict | None = None, layout: str = "iapas") -> Path:
        """The learned tensors in FAPrompt's checkpoint layout, with iapas's settings beside them.

        layout "official" adds the frozen buffers and unused layers of the authors' prompt learner, so their
        test.py loads the file strictly; iapas reads both alike.
        """
        record = {"method": self.name, "settings": asdict(self.settings), "clip": self.backbone.name, **(extra or {})}
        state = self.official_state() if layout == "official" else self.prompts.state_dict()
        return save_prompt_learner(path, state, record)

    @classmethod
    def load(cls, path: str | Path, backbone: ClipBackbone, rules: PromptRules = PromptRules()) -> "FAPrompt":
        """Prompts from `save` (or FAPrompt's own train.py, with the default shapes) on a frozen CLIP."""
        state, record = load_prompt_learner(path, cls.name, "train them with `iapas train faprompt`")
        try:
            settings = FAPromptSettings(**record["settings"]) if record else FAPromptSettings.for_backbone(backbone)
        except (KeyError, TypeError) as error:
            raise WeightsError(f"not a faprompt prompt checkpoint: {path} ({error})") from None
        model = cls(backbone, settings, rules)
        load_learned(model.prompts, state, path, backbone.name)
        return model.eval()
