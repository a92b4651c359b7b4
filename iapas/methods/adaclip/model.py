"""AdaCLIP (Cao et al., ECCV 2024) on a frozen CLIP, rule by rule as its official code (github caoyunkang/AdaCLIP).

What is learned (`AdaClipPrompts`) has the official module names, so the released checkpoints load
into it key by key (`checkpoint.py`):
- `text_prompter` / `visual_prompter`: static prompts, one (length, width) tensor per prompted layer;
- `dynamic_text_prompt_generator` / `dynamic_visual_prompt_generator`: one linear head per prompt token,
  reading the frozen CLIP's (unnormalised) image embedding; the same dynamic prompts go to every layer;
- `patch_token_layer`: one linear head per feature layer, patch hidden states -> joint space;
- `cls_token_layer`: one linear head on the prompted image embedding.

Inference (method/adaclip.py `AdaCLIP.forward` with aggregation, method/trainer.py `evaluation`): the
image at 518 px, the 48 class-name sentences through the prompted text encoder, per feature layer the
logits 100 x cos(patch, text), their mean over layers upsampled (bilinear, align_corners True) to the
input size, softmax, Gaussian smoothing with sigma 4; the image score is the HSF embedding's softmax.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...errors import ConfigError, WeightsError
from ...acceleration.precision import full_precision
from ..batching import BatchedMethod, timed
from ...prompt_learning import gaussian_smooth
from ...prompt_learning.vision import PIXEL_RESIZES, evenly_spaced_layers
from ...types import Boxes, Masks, Result
from .hsf import HSF_CLUSTERS, cluster_centre, fuse
from .text import prompt_sentences

INPUT_SIZE = 518  # caoyunkang/AdaCLIP train.py / test.py --image_size (37 x 37 patches on ViT-L-14-336)
PROMPT_DEPTH = 4  # train.py --prompting_depth
PROMPT_LENGTH = 5  # train.py --prompting_length
LOGIT_SCALE = 100.0  # method/adaclip.py `visual_text_similarity`: 100 x cosine, not CLIP's learned scale
MAP_SIGMA = 4.0  # method/trainer.py `evaluation`: gaussian_filter(sigma=4)
STATIC_STD = 0.02  # method/adaclip.py `PromptLayer`: static prompts ~ N(0, 0.02)
DEFAULT_CLASS = "object"
# the dtype every inserted prompt is rounded through: None keeps float32 (our default); method/adaclip.py PromptLayer
# `forward_text` / `forward_visual` cast each prompt `.half()` before it joins the sequence (the official recipe)
PROMPT_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16}


def check_input_size(size: int, backbone: ClipBackbone) -> int:
    """`size` when it is a positive multiple of the CLIP's patch size, else a one-line ConfigError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % backbone.patch_size:
        raise ConfigError(f"AdaCLIP input size must be a multiple of the CLIP's patch size {backbone.patch_size}, got {size!r}")
    return size


def default_layers(depth: int) -> tuple[int, ...]:
    """Four evenly spaced feature layers ending at the last: 6, 12, 18, 24 for a 24-layer ViT (train.py `substage`)."""
    return evenly_spaced_layers(depth)


@dataclass(frozen=True)
class AdaClipSettings:
    """Architecture of the learned parts and the input size; stored in every checkpoint of ours."""

    layers: tuple[int, ...]
    prompt_length: int = PROMPT_LENGTH
    prompt_depth: int = PROMPT_DEPTH
    image_size: int = INPUT_SIZE

    @classmethod
    def for_backbone(cls, backbone: ClipBackbone, layers: Sequence[int] = (), prompt_length: int = PROMPT_LENGTH,
                     prompt_depth: int = 0, image_size: int = INPUT_SIZE) -> "AdaClipSettings":
        """Settings that fit the backbone: four evenly spaced layers and AdaCLIP's depth, capped by a shallow CLIP."""
        depth = prompt_depth or min(PROMPT_DEPTH, backbone.depth, backbone.text_depth)
        return cls(tuple(layers) or default_layers(backbone.depth), prompt_length, depth, image_size)


class StaticPrompts(torch.nn.Module):
    """One learnable (length, width) prompt per prompted layer (method/adaclip.py `PromptLayer.static_prompts`)."""

    def __init__(self, depth: int, length: int, width: int) -> None:
        super().__init__()
        self.static_prompts = torch.nn.ParameterList(torch.nn.Parameter(STATIC_STD * torch.randn(length, width))
                                                     for _ in range(depth))


class Heads(torch.nn.Module):
    """Parallel linear heads (method/adaclip.py `ProjectLayer`): per feature layer, or per prompt token."""

    def __init__(self, width_in: int, width_out: int, count: int) -> None:
        super().__init__()
        self.head = torch.nn.ModuleList(torch.nn.Linear(width_in, width_out) for _ in range(count))

    def per_token(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, count, out): every head applied to the same (B, in) embedding (the dynamic prompt generators)."""
        return torch.stack([head(embedding) for head in self.head], dim=1)


class AdaClipPrompts(torch.nn.Module):
    """Everything AdaCLIP learns, under the official names (without the `clip_model.` prefix)."""

    def __init__(self, settings: AdaClipSettings, text_width: int, vision_width: int, embed_dim: int) -> None:
        super().__init__()
        self.settings = settings
        depth, length = settings.prompt_depth, settings.prompt_length
        self.text_prompter = StaticPrompts(depth, length, text_width)
        self.visual_prompter = StaticPrompts(depth, length, vision_width)
        self.patch_token_layer = Heads(vision_width, embed_dim, len(settings.layers))
        self.cls_token_layer = Heads(embed_dim, embed_dim, 1)
        self.dynamic_visual_prompt_generator = Heads(embed_dim, vision_width, length)
        self.dynamic_text_prompt_generator = Heads(embed_dim, text_width, length)


class AdaClipOutput(NamedTuple):
    """One batch through AdaCLIP: per-layer patch logits and the HSF image probabilities."""

    layer_logits: torch.Tensor  # (B, layers, 2, g, g) normal/anomalous logits per feature layer
    image_probabilities: torch.Tensor  # (B, 2) softmax of the HSF embedding against the two text embeddings


class AdaClip(BatchedMethod, torch.nn.Module):
    """Frozen CLIP + AdaCLIP's learned prompts and heads -> anomaly maps and an HSF image score."""

    name = "adaclip"
    default_image_score = "method"  # `iapas eval` ranks images by HSF, as the reference's test.py does

    def __init__(self, backbone: ClipBackbone, settings: AdaClipSettings | None = None, *, resize: str = "antialiased",
                 prompt_precision: str = "fp32") -> None:
        """`resize` names a `PIXEL_RESIZES` entry ("pil": the official loader's); `prompt_precision` a `PROMPT_PRECISIONS` one."""
        super().__init__()
        self.backbone = backbone
        self.settings = settings or AdaClipSettings.for_backbone(backbone)
        if resize not in PIXEL_RESIZES or prompt_precision not in PROMPT_PRECISIONS:
            raise ConfigError(f"AdaCLIP resize must be one of {', '.join(PIXEL_RESIZES)} and prompt precision one of "
                              f"{', '.join(PROMPT_PRECISIONS)}, got {resize!r} and {prompt_precision!r}")
        self.resize, self.prompt_precision = resize, prompt_precision
        bad = backbone.missing_layers(self.settings.layers)
        if bad:
            raise WeightsError(f"AdaCLIP layers {bad} do not exist in a {backbone.depth}-layer CLIP")
        if not 1 <= self.settings.prompt_depth <= min(backbone.depth, backbone.text_depth):
            raise WeightsError(f"AdaCLIP prompt depth {self.settings.prompt_depth} does not fit a CLIP with "
                               f"{backbone.depth} vision and {backbone.text_depth} text layers")
        config = backbone.clip.config
        self.prompts = AdaClipPrompts(self.settings, config.text_config.hidden_size, config.vision_config.hidden_size,
                                      backbone.embed_dim)
        self.class_name = DEFAULT_CLASS
        self._sentence_ids: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self.to(backbone.device)

    def inserted(self, prompt: torch.Tensor) -> torch.Tensor:
        """A prompt as it joins a token sequence: rounded through fp16 under the official rule, else unchanged."""
        dtype = PROMPT_PRECISIONS[self.prompt_precision]
        return prompt if dtype is None else prompt.to(dtype).to(prompt.dtype)

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The images at the input size, resized by the chosen rule."""
        return PIXEL_RESIZES[self.resize](self.backbone, images, self.settings.image_size)

    # ---- text -------------------------------------------------------------------------------------
    def _tokens(self, class_name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids, EOS positions and the normal count of a class's 48 sentences (cached per class)."""
        if class_name not in self._sentence_ids:
            normal, abnormal = prompt_sentences(class_name)
            with torch.inference_mode(False):  # cached: usable later in training as well as at test time
                self._sentence_ids[class_name] = self._tokenise(normal, abnormal)
        return self._sentence_ids[class_name]

    def _tokenise(self, normal: list[str], abnormal: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids padded to the longest sentence (the causal mask makes later padding irrelevant), EOS positions."""
        ids = self.backbone.tokenizer(normal + abnormal, padding=True, return_tensors="pt")["input_ids"]
        eos = (ids == self.backbone.clip.text_model.eos_token_id).int().argmax(-1)
        return ids.to(self.backbone.device), eos.to(self.backbone.device), len(normal)

    def text_embeddings(self, class_name: str, dynamic: torch.Tensor) -> torch.Tensor:
        """(2, E) unit normal/abnormal class embeddings under one image's text prompts.

        method/adaclip.py `PromptLayer.forward_text`: layer 0 reads the sentence as tokenised; before layers
        1 .. depth-1 positions 1 .. length are overwritten by static[i] + dynamic, the same prompts for
        normal and abnormal sentences. `TextEmbebddingLayer.encode_text`: each sentence normalised, averaged
        per state, normalised again.
        """
        ids, eos, normal_count = self._tokens(class_name)
        statics = self.prompts.text_prompter.static_prompts
        deep = torch.stack([statics[i] + dynamic for i in range(1, self.settings.prompt_depth)]) if len(statics) > 1 else None
        words = self.backbone.clip.text_model.embeddings.token_embedding(ids)
        if deep is not None:  # rounded per sentence, as the reference casts its expanded copies (so are the gradients)
            deep = self.inserted(deep[None].expand(len(ids), -1, -1, -1))
        sentences = self.backbone.encode_text_embeddings(words, eos, deep, prompt_start=1)  # unit (N, E)
        states = [sentences[:normal_count].mean(0), sentences[normal_count:].mean(0)]
        return F.normalize(torch.stack(states), dim=-1)

    # ---- vision -----------------------------------------------------------------------------------
    def encode_image(self, tokens: torch.Tensor, dynamic: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Prompted image embedding (B, E) and the feature layers' hidden states (B, 1 + g*g, D).

        method/adaclip.py `PromptLayer.forward_visual`: before layer 0 the prompts static[0] + dynamic are
        appended to the sequence; before layers 1 .. depth-1 they are replaced by that layer's; after that
        they stay in the sequence to the last layer. Feature layers leave them out.
        """
        vision = self.backbone.clip.vision_model
        hidden = vision.pre_layrnorm(tokens)
        count = tokens.shape[1]
        statics = self.prompts.visual_prompter.static_prompts
        collected = []
        for index, layer in enumerate(vision.encoder.layers):
            if index < self.settings.prompt_depth:
                hidden = torch.cat([hidden[:, :count], self.inserted(statics[index] + dynamic).to(hidden.dtype)], dim=1)
            output = layer(hidden, None)
            hidden = output[0] if isinstance(output, tuple) else output
            if index + 1 in self.settings.layers:
                collected.append(hidden[:, :count])
        return self.backbone.project(hidden[:, 0]), collected

    def forward(self, pixels: torch.Tensor, class_names: Sequence[str]) -> AdaClipOutput:
        """Per-layer patch logits and HSF image probabilities for a batch of images and their class names."""
        tokens = self.backbone.tokens(pixels)  # position embeddings follow the 518 px grid
        with torch.no_grad():  # method/adaclip.py `generate_and_set_dynamic_promtps`: the unprompted CLIP's embedding
            frozen, _ = self.backbone.encode_tokens(tokens)
        prompts = self.prompts
        visual_dynamic = prompts.dynamic_visual_prompt_generator.per_token(frozen)  # (B, length, Dv)
        text_dynamic = prompts.dynamic_text_prompt_generator.per_token(frozen)  # (B, length, Dt)
        image_embedding, hidden = self.encode_image(tokens, visual_dynamic)
        cls = F.normalize(prompts.cls_token_layer.head[0](image_embedding).float(), dim=-1)
        patches = [F.normalize(head(h[:, 1:]).float(), dim=-1) for head, h in zip(prompts.patch_token_layer.head, hidden)]
        grid = int(round(patches[0].shape[1] ** 0.5))
        layer_logits, image_probabilities = [], []
        for b, class_name in enumerate(class_names):  # the reference runs batch 1: text prompts are per image
            text = self.text_embeddings(class_name, text_dynamic[b]).float()  # (2, E)
            logits = [LOGIT_SCALE * layer[b] @ text.T for layer in patches]  # per layer (g*g, 2)
            anomaly = torch.stack(logits).mean(0).softmax(-1)[:, 1]
            centre = cluster_centre([layer[b] for layer in patches], anomaly.detach(), HSF_CLUSTERS)
            image_probabilities.append((LOGIT_SCALE * fuse(centre, cls[b]) @ text.T).softmax(-1))
            layer_logits.append(torch.stack([l.T.reshape(2, grid, grid) for l in logits]))
        return AdaClipOutput(torch.stack(layer_logits), torch.stack(image_probabilities))

    def anomaly_map(self, layer_logits: torch.Tensor) -> torch.Tensor:
        """(B, S, S) test-time map: layers' logits averaged, upsampled to the input size, softmax (before smoothing).

        The reference upsamples each layer and then averages; bilinear upsampling is linear, so averaging
        first gives the same map with a quarter of the work.
        """
        with full_precision(layer_logits.device):  # post-processing: float32 under any --precision
            mean = layer_logits.float().mean(dim=1)
            size = self.settings.image_size
            return F.interpolate(mean, size=(size, size), mode="bilinear", align_corners=True).softmax(dim=1)[:, 1]

    # ---- the Method protocol ----------------------------------------------------------------------
    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """The category's name goes into the text prompts; nothing else is per category."""
        self.class_name = category or DEFAULT_CLASS

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, float]]:
        """One prompted-CLIP forward over the batch: each image's test map at the input size (before smoothing) and HSF probabilities.

        The text prompts and HSF stay per image inside `forward`, as the reference computes them at batch 1.
        It runs under `--precision`'s autocast (`BatchedMethod`); the reference's test-time fp16 on a GPU
        (method/adaclip.py, method/trainer.py `autocast`) is `--precision fp16`.
        """
        start = time.perf_counter()
        output = self(self.pixels(images), [self.class_name] * len(images))
        heat = self.anomaly_map(output.layer_logits)
        return list(zip(heat, output.image_probabilities)), {"prompted_clip": time.perf_counter() - start}

    @torch.inference_mode()
    def finish(self, image: np.ndarray, encoded: tuple[torch.Tensor, torch.Tensor], timings: dict[str, float]) -> Result:
        """The smoothed map (computed at the input size, then resized to the image) and the HSF image score."""
        start = time.perf_counter()
        heat, probabilities = encoded
        height, width = image.shape[:2]
        smoothed = torch.from_numpy(gaussian_smooth(heat, MAP_SIGMA))[None, None]
        resized = F.interpolate(smoothed, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        sentences = prompt_sentences(self.class_name)
        timed(timings, "smoothing", start)
        return Result(resized.numpy().astype(np.float32), Boxes.empty(), Masks.empty(height, width),
                      (sentences[0][0], sentences[1][0]), timings, self.name, float(probabilities[1]))

    def loss(self, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """The training loss of one batch (see `train.adaclip_loss`)."""
        from .train import adaclip_loss

        return adaclip_loss(self, pixels, masks, labels, class_names)

    def settings_record(self) -> dict:
        """The architecture settings as plain data, stored with every checkpoint and compared on resume."""
        return {**asdict(self.settings), "layers": list(self.settings.layers)}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Only the learned tensors and their settings: the CLIP stays where the user keeps it."""
        from .checkpoint import save_prompts

        return save_prompts(self, path, extra)

    @classmethod
    def load(cls, path: str | Path, backbone: ClipBackbone, image_size: int = 0, **rules) -> "AdaClip":
        """Our checkpoint or an official released one (`pretrained_*.pth`) on top of a frozen CLIP.

        `image_size` (0: the checkpoint's; 518 for a released one) sets the input size; `rules` are
        `resize` and `prompt_precision` (see `__init__`).
        """
        from .checkpoint import load_prompts

        return load_prompts(cls, path, backbone, image_size, **rules)
