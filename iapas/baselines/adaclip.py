"""AdaCLIP-style hybrid prompts on a frozen CLIP.

Static prompts: learnable context tokens shared by all images, one set for the normal and one for the
anomalous sentence. Dynamic prompts: a projection of each image's class-token embedding added to
those tokens, so every image gets its own text embeddings. Patch tokens from several ViT layers
(ViT-L/14: 6, 12, 18, 24) go through per-layer projections into the joint space, are compared with
the two text embeddings, and give one softmax anomaly map per layer; the maps are upsampled and
averaged. Hybrid semantic fusion (HSF) scores the image: the most anomalous patches are clustered,
the centroid of the most anomalous cluster is fused with the class-token embedding, and that fused
embedding is classified against the text.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WeightsError
from ..types import Boxes, Masks, Result
from .clip_backbone import ClipBackbone

NORMAL_SENTENCE = "flawless object."
ANOMALOUS_SENTENCE = "damaged object."
HSF_TOP_FRACTION = 0.1  # patches entering the clustering
HSF_CLUSTERS = 3
CHECKPOINT_FORMAT = 1


def default_layers(depth: int) -> tuple[int, ...]:
    """Four evenly spaced layers ending at the last: 6, 12, 18, 24 for a 24-layer ViT-L/14."""
    return tuple(sorted({max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)}))


@dataclass(frozen=True)
class AdaClipSettings:
    """Architecture of the learned parts; stored in every checkpoint."""

    layers: tuple[int, ...]
    context_tokens: int = 4


class AdaClipPrompts(torch.nn.Module):
    """Everything AdaCLIP learns: static context, the dynamic-prompt projection and per-layer patch projections."""

    def __init__(self, settings: AdaClipSettings, text_width: int, vision_width: int, embed_dim: int) -> None:
        super().__init__()
        self.settings = settings
        self.static_context = torch.nn.Parameter(0.02 * torch.randn(2, settings.context_tokens, text_width))
        self.dynamic = torch.nn.Linear(embed_dim, text_width)
        torch.nn.init.zeros_(self.dynamic.weight)  # start from the static prompts alone
        torch.nn.init.zeros_(self.dynamic.bias)
        self.patch_projections = torch.nn.ModuleList(torch.nn.Linear(vision_width, embed_dim) for _ in settings.layers)


class AdaClip(torch.nn.Module):
    """Frozen CLIP + learned hybrid prompts -> anomaly maps and an HSF image score."""

    name = "adaclip"

    def __init__(self, backbone: ClipBackbone, settings: AdaClipSettings | None = None, prompts: AdaClipPrompts | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.settings = settings or AdaClipSettings(default_layers(backbone.depth))
        bad = [layer for layer in self.settings.layers if not 1 <= layer <= backbone.depth]
        if bad:
            raise WeightsError(f"AdaCLIP layers {bad} do not exist in a {backbone.depth}-layer CLIP")
        clip = backbone.clip
        self.prompts = prompts or self._initial_prompts()
        template = " ".join(["x"] * self.settings.context_tokens)
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

    def text_embeddings(self, cls_embedding: torch.Tensor) -> torch.Tensor:
        """(B, 2, E) unit normal/anomalous text embeddings, the context shifted by each image's dynamic prompt."""
        batch = len(cls_embedding)
        words = self.backbone.clip.text_model.embeddings.token_embedding(self.sentence_ids)  # (2, L, D)
        context = self.prompts.static_context[None] + self.prompts.dynamic(F.normalize(cls_embedding, dim=-1))[:, None, None]
        n = self.settings.context_tokens
        embeddings = torch.cat([words[None, :, :1].expand(batch, -1, -1, -1), context, words[None, :, 1 + n:].expand(batch, -1, -1, -1)], dim=2)
        text = self.backbone.encode_text_embeddings(embeddings.flatten(0, 1), self.eos_positions.repeat(batch))
        return text.view(batch, 2, -1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer patch anomaly probabilities (B, layers, g, g) and HSF image probabilities (B,)."""
        tokens = self.backbone.tokens(pixels)
        cls_embedding, hidden = self.backbone.encode_tokens(tokens, self.settings.layers)
        text = self.text_embeddings(cls_embedding)
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
        count = max(HSF_CLUSTERS, int(round(HSF_TOP_FRACTION * patches.shape[1])))
        count = min(count, patches.shape[1])
        fused = []
        for image_patches, image_scores, cls in zip(patches, scores, F.normalize(cls_embedding.float(), dim=-1)):
            top = image_scores.topk(count).indices
            points, point_scores = image_patches[top], image_scores[top]
            clusters = min(HSF_CLUSTERS, count)
            centres = points[torch.linspace(0, count - 1, clusters).long()].detach()  # deterministic init along the score order
            for _ in range(5):
                assignment = torch.cdist(points.detach(), centres).argmin(dim=1)
                centres = torch.stack([points[assignment == k].mean(0) if (assignment == k).any() else centres[k] for k in range(clusters)]).detach()
            assignment = torch.cdist(points.detach(), centres).argmin(dim=1)
            cluster_scores = torch.stack([point_scores[assignment == k].mean() if (assignment == k).any() else point_scores.new_tensor(-1.0)
                                          for k in range(clusters)])
            chosen = points[assignment == cluster_scores.argmax()].mean(0)
            fused.append(F.normalize(cls + F.normalize(chosen, dim=-1), dim=-1))
        fused = torch.stack(fused)
        return (scale * (fused[:, None] * text).sum(-1)).softmax(dim=-1)[:, 1]

    @torch.inference_mode()
    def segment(self, image: np.ndarray) -> Result:
        """Mean of the upsampled per-layer maps at the image's resolution, and the HSF image score."""
        start = time.perf_counter()
        height, width = image.shape[:2]
        patch_maps, image_probability = self(self.backbone.preprocess([image]))
        upsampled = F.interpolate(patch_maps.float(), size=(height, width), mode="bilinear", align_corners=False).mean(dim=1)[0]
        heat = upsampled.clamp(0, 1).cpu().numpy().astype(np.float32)
        return Result(heat, Boxes.empty(), Masks.empty(height, width), (NORMAL_SENTENCE, ANOMALOUS_SENTENCE),
                      {"adaclip": time.perf_counter() - start}, self.name, float(image_probability[0]))

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Nothing per category: AdaCLIP's prompts are class-agnostic."""

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Only the learned prompts and their settings: the CLIP stays where the user keeps it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": CHECKPOINT_FORMAT, "settings": asdict(self.settings), "clip": self.backbone.name,
                   "prompts": self.prompts.state_dict(), **(extra or {})}
        temporary = path.with_suffix(".tmp")
        torch.save(payload, temporary)
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, backbone: ClipBackbone) -> "AdaClip":
        """Trained prompts from `save` on top of a frozen CLIP; a one-line WeightsError when they do not fit."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"AdaCLIP prompt weights not found: {path} (train them with `iapas train adaclip`)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            settings = AdaClipSettings(**{**payload["settings"], "layers": tuple(payload["settings"]["layers"])})
        except Exception as error:
            raise WeightsError(f"not an AdaCLIP prompt checkpoint: {path} ({str(error).splitlines()[0][:120]})") from None
        model = cls(backbone, settings)
        try:
            model.prompts.load_state_dict(payload["prompts"])
        except RuntimeError:
            raise WeightsError(f"{path} was trained on CLIP {payload.get('clip')!r} and does not fit CLIP {backbone.name!r}") from None
        return model.eval()
