"""AdaCLIP-style hybrid prompts on a frozen CLIP.

Hybrid prompts go into both encoders, deep: each of the first `prompt_depth` layers of the text and
the vision transformer gets its own `prompt_length` prompt tokens (AdaCLIP's defaults: depth 4,
length 5). Every prompt is static + dynamic: a learnable token shared by all images plus a projection
of the image's class-token embedding from the unprompted (frozen) CLIP, so every image gets its own
prompts. The text branch has one sentence for normal and one for anomalous, each with its own
static prompts. Patch tokens from several ViT layers (ViT-L/14: 6, 12, 18, 24) go through per-layer
projections into the joint space, are compared with the two text embeddings, and give one softmax
anomaly map per layer; the maps are upsampled and averaged. Hybrid semantic fusion (HSF) scores the
image: the patch embeddings are clustered (k-means, k = 20), the centroid of the cluster with the
highest mean anomaly score is fused with the class-token embedding, and that fused embedding is classified against the text.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import WeightsError
from ...files import atomic_write
from ...types import Boxes, Masks, Result
from ...backends.clip import ClipBackbone

NORMAL_SENTENCE = "flawless object."
ANOMALOUS_SENTENCE = "damaged object."
PROMPT_DEPTH = 4  # AdaCLIP's default: prompts in the first four layers of both encoders
PROMPT_LENGTH = 5  # AdaCLIP's default: five prompt tokens per layer
HSF_CLUSTERS = 20  # AdaCLIP's k for clustering the patch embeddings
KMEANS_STEPS = 10
CHECKPOINT_FORMAT = 2  # 2: deep hybrid prompts in both encoders


def default_layers(depth: int) -> tuple[int, ...]:
    """Four evenly spaced layers ending at the last: 6, 12, 18, 24 for a 24-layer ViT-L/14."""
    return tuple(sorted({max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)}))


def most_anomalous_centroid(points: torch.Tensor, scores: torch.Tensor, clusters: int) -> torch.Tensor:
    """Centroid (E,) of the k-means cluster of `points` (N, E) whose mean `scores` (N,) is highest.

    Deterministic: the first centre is the top-scoring point and each next one the point farthest from
    the centres so far; assignments are made without gradients, the centroid keeps them.
    """
    clusters = min(clusters, len(points))
    detached = points.detach()
    chosen = [int(scores.argmax())]
    distance = torch.cdist(detached, detached[chosen]).min(dim=1).values
    while len(chosen) < clusters:
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, torch.cdist(detached, detached[chosen[-1:]])[:, 0])
    centres = detached[chosen]
    for _ in range(KMEANS_STEPS):
        assignment = torch.cdist(detached, centres).argmin(dim=1)
        centres = torch.stack([detached[assignment == k].mean(0) if (assignment == k).any() else centres[k]
                               for k in range(clusters)])
    assignment = torch.cdist(detached, centres).argmin(dim=1)
    means = torch.stack([scores[assignment == k].mean() if (assignment == k).any() else scores.new_tensor(-float("inf"))
                         for k in range(clusters)])
    return points[assignment == means.argmax()].mean(0)


@dataclass(frozen=True)
class AdaClipSettings:
    """Architecture of the learned parts; stored in every checkpoint."""

    layers: tuple[int, ...]
    prompt_length: int = PROMPT_LENGTH
    prompt_depth: int = PROMPT_DEPTH

    @classmethod
    def for_backbone(cls, backbone: ClipBackbone, layers: Sequence[int] = (), prompt_length: int = PROMPT_LENGTH,
                     prompt_depth: int = 0) -> "AdaClipSettings":
        """Settings that fit the backbone: four evenly spaced layers and AdaCLIP's depth, capped by a shallow CLIP."""
        depth = prompt_depth or min(PROMPT_DEPTH, backbone.depth, backbone.text_depth)
        return cls(tuple(layers) or default_layers(backbone.depth), prompt_length, depth)


class AdaClipPrompts(torch.nn.Module):
    """Everything AdaCLIP learns: static and dynamic prompts for both encoders, and per-layer patch projections."""

    def __init__(self, settings: AdaClipSettings, text_width: int, vision_width: int, embed_dim: int) -> None:
        super().__init__()
        self.settings = settings
        depth, length = settings.prompt_depth, settings.prompt_length
        self.text_static = torch.nn.Parameter(0.02 * torch.randn(depth, 2, length, text_width))
        self.visual_static = torch.nn.Parameter(0.02 * torch.randn(depth, length, vision_width))
        self.text_dynamic = torch.nn.Linear(embed_dim, depth * text_width)
        self.visual_dynamic = torch.nn.Linear(embed_dim, depth * vision_width)
        for generator in (self.text_dynamic, self.visual_dynamic):  # start from the static prompts alone
            torch.nn.init.zeros_(generator.weight)
            torch.nn.init.zeros_(generator.bias)
        self.patch_projections = torch.nn.ModuleList(torch.nn.Linear(vision_width, embed_dim) for _ in settings.layers)

    def visual(self, query: torch.Tensor) -> torch.Tensor:
        """(B, depth, length, Dv) visual prompts for unit image embeddings `query` (B, E)."""
        depth = self.settings.prompt_depth
        return self.visual_static[None] + self.visual_dynamic(query).view(len(query), depth, 1, -1)

    def text(self, query: torch.Tensor) -> torch.Tensor:
        """(B, depth, 2, length, Dt) normal/anomalous text prompts for unit image embeddings `query` (B, E)."""
        depth = self.settings.prompt_depth
        return self.text_static[None] + self.text_dynamic(query).view(len(query), depth, 1, 1, -1)


class AdaClip(torch.nn.Module):
    """Frozen CLIP + learned hybrid prompts -> anomaly maps and an HSF image score."""

    name = "adaclip"

    def __init__(self, backbone: ClipBackbone, settings: AdaClipSettings | None = None, prompts: AdaClipPrompts | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.settings = settings or AdaClipSettings.for_backbone(backbone)
        bad = [layer for layer in self.settings.layers if not 1 <= layer <= backbone.depth]
        if bad:
            raise WeightsError(f"AdaCLIP layers {bad} do not exist in a {backbone.depth}-layer CLIP")
        if not 1 <= self.settings.prompt_depth <= min(backbone.depth, backbone.text_depth):
            raise WeightsError(f"AdaCLIP prompt depth {self.settings.prompt_depth} does not fit a CLIP with "
                               f"{backbone.depth} vision and {backbone.text_depth} text layers")
        clip = backbone.clip
        self.prompts = prompts or self._initial_prompts()
        template = " ".join(["x"] * self.settings.prompt_length)
        tokens = backbone.tokenizer([f"{template} {NORMAL_SENTENCE}", f"{template} {ANOMALOUS_SENTENCE}"], padding=True, return_tensors="pt")
        self.register_buffer("sentence_ids", tokens["input_ids"], persistent=False)
        eos = clip.text_model.eos_token_id
        ids = tokens["input_ids"]
        eos_positions = ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)
        self.register_buffer("eos_positions", eos_positions, persistent=False)
        self.to(backbone.device)

    def _initial_prompts(self) -> AdaClipPrompts:
        clip = self.backbone.clip
        prompts = AdaClipPrompts(self.settings, clip.config.text_config.hidden_size, clip.config.vision_config.hidden_size,
                                 self.backbone.embed_dim)
        with torch.no_grad():  # each patch projection starts as CLIP's own visual projection
            for projection in prompts.patch_projections:
                projection.weight.copy_(clip.visual_projection.weight)
                projection.bias.zero_()
        return prompts

    def text_embeddings(self, query: torch.Tensor) -> torch.Tensor:
        """(B, 2, E) unit normal/anomalous text embeddings under each image's hybrid text prompts."""
        batch, length = len(query), self.settings.prompt_length
        prompts = self.prompts.text(query)  # (B, depth, 2, length, Dt)
        words = self.backbone.clip.text_model.embeddings.token_embedding(self.sentence_ids)[None].expand(batch, -1, -1, -1)
        embeddings = torch.cat([words[:, :, :1], prompts[:, 0], words[:, :, 1 + length:]], dim=2).flatten(0, 1)
        deep = prompts[:, 1:].transpose(1, 2).flatten(0, 1)  # (B*2, depth-1, length, Dt)
        text = self.backbone.encode_text_embeddings(embeddings, self.eos_positions.repeat(batch), deep, prompt_start=1)
        return text.view(batch, 2, -1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer patch anomaly probabilities (B, layers, g, g) and HSF image probabilities (B,)."""
        tokens = self.backbone.tokens(pixels)
        with torch.no_grad():  # the dynamic prompts read the unprompted CLIP's view of the image
            frozen_cls, _ = self.backbone.encode_tokens(tokens)
        query = F.normalize(frozen_cls.float(), dim=-1)
        cls_embedding, hidden = self.backbone.encode_tokens(tokens, self.settings.layers, self.prompts.visual(query))
        text = self.text_embeddings(query)
        scale = self.backbone.logit_scale()
        grid = self.backbone.grid
        maps, last_patches = [], None
        for projection, layer_hidden in zip(self.prompts.patch_projections, hidden):
            patches = F.normalize(projection(layer_hidden[:, 1:]).float(), dim=-1)  # (B, g*g, E)
            probability = (scale * patches @ text.transpose(1, 2)).softmax(dim=-1)[..., 1]
            maps.append(probability.view(-1, grid, grid))
            last_patches = patches
        patch_maps = torch.stack(maps, dim=1)
        image_probability = self.hybrid_semantic_fusion(cls_embedding, last_patches, patch_maps.mean(dim=1).flatten(1), text, scale)
        return patch_maps, image_probability

    @staticmethod
    def hybrid_semantic_fusion(cls_embedding, patches, scores, text, scale) -> torch.Tensor:
        """Image probability from the class token fused with the centroid of the most anomalous patch cluster."""
        fused = []
        for image_patches, image_scores, cls in zip(patches, scores, F.normalize(cls_embedding.float(), dim=-1)):
            centroid = most_anomalous_centroid(image_patches, image_scores, HSF_CLUSTERS)
            fused.append(F.normalize(cls + F.normalize(centroid, dim=-1), dim=-1))
        fused = torch.stack(fused)
        return (scale * (fused[:, None] * text).sum(-1)).softmax(dim=-1)[:, 1]

    @torch.inference_mode()
    def segment(self, image: np.ndarray) -> Result:
        """Mean of the upsampled per-layer maps at the image's resolution, and the HSF image score."""
        start = time.perf_counter()
        height, width = image.shape[:2]
        patch_maps, image_probability = self(self.backbone.preprocess([image]))
        forward = time.perf_counter()
        upsampled = F.interpolate(patch_maps.float(), size=(height, width), mode="bilinear", align_corners=False).mean(dim=1)[0]
        heat = upsampled.clamp(0, 1).cpu().numpy().astype(np.float32)
        return Result(heat, Boxes.empty(), Masks.empty(height, width), (NORMAL_SENTENCE, ANOMALOUS_SENTENCE),
                      {"prompted_clip": forward - start, "upsampling": time.perf_counter() - forward}, self.name,
                      float(image_probability[0]))

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Nothing per category: AdaCLIP's prompts are class-agnostic."""

    def loss(self, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (see `train.adaclip_loss`)."""
        from .train import adaclip_loss

        return adaclip_loss(self, pixels, masks, labels)

    def settings_record(self) -> dict:
        """The architecture settings as plain data, stored with every checkpoint and compared on resume."""
        return {**asdict(self.settings), "layers": list(self.settings.layers)}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Only the learned prompts and their settings: the CLIP stays where the user keeps it."""
        payload = {"format": CHECKPOINT_FORMAT, "settings": asdict(self.settings), "clip": self.backbone.name,
                   "prompts": self.prompts.state_dict(), **(extra or {})}
        return atomic_write(path, lambda temporary: torch.save(payload, temporary))

    @classmethod
    def load(cls, path: str | Path, backbone: ClipBackbone) -> "AdaClip":
        """Trained prompts from `save` on top of a frozen CLIP; a one-line WeightsError when they do not fit."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"AdaCLIP prompt weights not found: {path} (train them with `iapas train adaclip`)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format {payload.get('format')}, this iapas reads format {CHECKPOINT_FORMAT}; retrain")
            settings = AdaClipSettings(**{**payload["settings"], "layers": tuple(payload["settings"]["layers"])})
        except Exception as error:
            raise WeightsError(f"not an AdaCLIP prompt checkpoint: {path} ({str(error).splitlines()[0][:120]})") from None
        model = cls(backbone, settings)
        try:
            model.prompts.load_state_dict(payload["prompts"])
        except RuntimeError:
            raise WeightsError(f"{path} was trained on CLIP {payload.get('clip')!r} and does not fit CLIP {backbone.name!r}") from None
        return model.eval()
