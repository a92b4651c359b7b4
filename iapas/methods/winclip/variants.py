"""The two WinCLIP reimplementations, rule by rule: caoyunkang/WinClip (IAP-AS Table 1) and anomalib's.

The WinCLIP authors released no code. Each variant says how an image enters CLIP, which prompts are used,
how window scores become a patch map, how the few-shot visual memory is mixed in, how the map is
up-sampled and what the image score is. The reference file of every rule is cited beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...backends.clip import ClipBackbone
from ...registry import Registry
from .prompts import ANOMALIB_PROMPTS, CAOYUNKANG_PROMPTS, PromptEnsemble
from .windows import WindowFeatures, harmonic, patch_mean, unit

CAOYUNKANG_LOGIT_SCALE = 100.0  # caoyunkang WinCLIP/model.py calculate_textual_anomaly_score: softmax(100 x cos)
CAOYUNKANG_LOADER_SIZE = 1024  # caoyunkang datasets/dataset.py __getitem__: cv2.resize of every image to 1024 x 1024
ANOMALIB_TEMPERATURE = 0.07  # anomalib torch_model.py TEMPERATURE: softmax(cos / 0.07)


@dataclass(frozen=True)
class Gallery:
    """WinCLIP+'s visual memory of K normal images: every window embedding per scale and every patch token."""

    windows: tuple[torch.Tensor, ...]  # per scale (K * W_s, E)
    patches: torch.Tensor  # (K * P, D)

    @classmethod
    def of(cls, features: Sequence[WindowFeatures]) -> "Gallery":
        scales = len(features[0].windows)
        return cls(tuple(torch.cat([f.windows[s] for f in features]) for s in range(scales)),
                   torch.cat([f.patches for f in features]))


@dataclass(frozen=True)
class Scored:
    """(P,) patch-level anomaly map of one image and the image score when the variant defines its own."""

    patch_map: torch.Tensor
    image_score: float | None


class Variant(Protocol):
    """What distinguishes one WinCLIP reimplementation from another."""

    prompts: PromptEnsemble

    def preprocess(self, backbone: ClipBackbone, image: np.ndarray, reference: bool) -> torch.Tensor: ...

    def score(self, features: WindowFeatures, text: torch.Tensor, windows: Sequence[np.ndarray],
              gallery: Gallery | None) -> Scored: ...

    def upsample(self, patch_map: torch.Tensor, backbone: ClipBackbone, height: int, width: int) -> torch.Tensor: ...


VARIANTS: Registry[type] = Registry("winclip variant")


def text_embeddings(backbone: ClipBackbone, prompts: PromptEnsemble, class_name: str) -> torch.Tensor:
    """(2, E) unit normal and anomalous text embeddings.

    Phrases are encoded without per-phrase normalisation, averaged per class, and the two averages normalised:
    caoyunkang WinCLIP/model.py build_text_feature_gallery (version "V1"); anomalib torch_model.py
    _collect_text_embeddings averages the same way and normalises inside its cosine similarity.
    """
    normal, anomalous = prompts.sentences(class_name)
    return unit(torch.stack([backbone.text_features(normal).mean(0), backbone.text_features(anomalous).mean(0)]))


def normalised(backbone: ClipBackbone, pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.to(backbone.device) - backbone.mean) / backbone.std


def _bilinear(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


@VARIANTS.register("caoyunkang")
class CaoyunkangRules:
    """caoyunkang/WinClip (WinCLIP/model.py, WinCLIP/ad_prompts.py, eval_WinCLIP.py, datasets/dataset.py)."""

    prompts = CAOYUNKANG_PROMPTS

    def preprocess(self, backbone: ClipBackbone, image: np.ndarray, reference: bool) -> torch.Tensor:
        """(1, 3, S, S): the loader's 1024 x 1024 resize, then PIL bicubic resize to S and centre crop S.

        eval_WinCLIP.py test(): query images reach PIL still in cv2's BGR order, while the few-shot references
        are converted to RGB first; both are reproduced. datasets/dataset.py resizes every image to 1024 x 1024
        with cv2's default (bilinear); WinCLIP/model.py then resizes to (240, 240) with PIL bicubic and centre-crops
        240, which leaves a 240 x 240 image as it is.
        """
        import cv2

        pixels = np.ascontiguousarray(image if reference else image[..., ::-1])
        pixels = cv2.resize(pixels, (CAOYUNKANG_LOADER_SIZE, CAOYUNKANG_LOADER_SIZE))
        size = backbone.image_size
        resized = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
        return normalised(backbone, torch.from_numpy(resized).permute(2, 0, 1)[None])

    def score(self, features: WindowFeatures, text: torch.Tensor, windows: Sequence[np.ndarray],
              gallery: Gallery | None) -> Scored:
        """Textual map fused harmonically with the visual map (or with itself when zero-shot); no image score.

        WinCLIP/model.py calculate_textual_anomaly_score: per window, normality = softmax(100 cos)[normal]; per
        scale, each patch averages 1/normality over the windows covering it (the reciprocal of their harmonic
        mean); the scales are averaged, and the map is 1 - 1/that average.
        calculate_visual_anomaly_score: per window 0.5 x (1 - max cosine to that scale's normal gallery), averaged
        arithmetically over the covering windows and over the scales; its loop switches to a scale's gallery
        after scoring that scale's first window, so that window is compared with the previous scale's gallery
        (reproduced). forward (fusion_version "textual_visual"):
        1 / (1/textual + 1/visual), the visual map being the textual one when there is no gallery.
        """
        patches = features.patches.shape[0]
        inverse = []
        for embeddings, window in zip(features.windows, windows):
            normality = (CAOYUNKANG_LOGIT_SCALE * unit(embeddings) @ text.T).softmax(dim=-1)[:, 0]
            inverse.append(patch_mean(1.0 / normality, window, patches))
        textual = 1.0 - 1.0 / torch.stack(inverse).mean(0)
        visual = textual
        if gallery is not None:
            per_scale = []
            for scale, (embeddings, window) in enumerate(zip(features.windows, windows)):
                similarity = (unit(embeddings) @ unit(gallery.windows[scale]).T).max(dim=1).values
                if scale:  # the reference moves to a scale's gallery only after scoring its first window
                    similarity[0] = (unit(embeddings[0]) @ unit(gallery.windows[scale - 1]).T).max()
                per_scale.append(patch_mean(0.5 * (1.0 - similarity), window, patches))
            visual = torch.stack(per_scale).mean(0)
        return Scored(1.0 / (1.0 / textual + 1.0 / visual), None)

    def upsample(self, patch_map: torch.Tensor, backbone: ClipBackbone, height: int, width: int) -> torch.Tensor:
        """WinCLIP/model.py forward: bilinear, align_corners=False, straight to the evaluation size."""
        return _bilinear(patch_map, (height, width))


def association(embeddings: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """anomalib utils.py visual_association_score: min over the references of (1 - cosine) / 2."""
    return ((1.0 - unit(embeddings) @ unit(references).T).min(dim=-1).values) / 2


@VARIANTS.register("anomalib")
class AnomalibRules:
    """anomalib src/anomalib/models/image/winclip/ (torch_model.py, utils.py, prompting.py, lightning_model.py)."""

    prompts = ANOMALIB_PROMPTS

    def preprocess(self, backbone: ClipBackbone, image: np.ndarray, reference: bool) -> torch.Tensor:
        """lightning_model.py configure_pre_processor: antialiased bicubic resize of the [0, 1] image to S x S, normalise."""
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255
        size = backbone.image_size
        resized = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return normalised(backbone, resized)

    def score(self, features: WindowFeatures, text: torch.Tensor, windows: Sequence[np.ndarray],
              gallery: Gallery | None) -> Scored:
        """torch_model.py forward.

        Zero-shot (_compute_zero_shot_scores): the harmonic mean over {class-token score broadcast to the grid,
        each scale's harmonic aggregation of its window scores}, scores = softmax(cos / 0.07)[anomalous]; the image
        score is the class-token score. Few-shot (_compute_few_shot_scores): the mean over {patch-token
        association, each scale's harmonic aggregation of window association} is averaged with the zero-shot
        map, and its maximum with the image score.
        """
        patches = features.patches.shape[0]

        def anomalous(embeddings: torch.Tensor) -> torch.Tensor:
            return (unit(embeddings) @ text.T / ANOMALIB_TEMPERATURE).softmax(dim=-1)[..., 1]

        image_score = anomalous(features.image[None])[0]
        maps = [image_score.expand(patches)]
        maps += [harmonic(anomalous(e), w, patches) for e, w in zip(features.windows, windows)]
        zero_shot = len(maps) / (1.0 / torch.stack(maps)).sum(0)
        if gallery is None:
            return Scored(zero_shot, float(image_score))
        few_shot = [association(features.patches, gallery.patches)]
        few_shot += [harmonic(association(e, m), w, patches) for e, m, w in zip(features.windows, gallery.windows, windows)]
        visual = torch.stack(few_shot).mean(0)
        return Scored((zero_shot + visual) / 2, float((image_score + visual.max()) / 2))

    def upsample(self, patch_map: torch.Tensor, backbone: ClipBackbone, height: int, width: int) -> torch.Tensor:
        """torch_model.py forward: bilinear (align_corners=False) to the model's input size; then to the image's."""
        size = backbone.image_size
        at_input = _bilinear(patch_map, (size, size))
        return at_input if (height, width) == (size, size) else _bilinear(at_input, (height, width))
