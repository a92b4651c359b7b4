"""Image taggers for step 1-1: CLIP zero-shot over a vocabulary, RAM, or a fixed list."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from ..errors import ConfigError, WeightsError
from ..registry import Registry
from ..vocabulary import tag_vocabulary, unique_prompts
from .base import require_path, warn_if_demo
from .clip import ClipBackbone

CLIP_TAG_TEMPLATES = ("a photo of a {}.", "a close-up photo of {}.", "an industrial photo of a {}.")


class Tagger(Protocol):
    """Tags for a set of images, most confident first; `model_id` names it in calibration files."""

    model_id: str

    def tag(self, images: Sequence[np.ndarray]) -> tuple[str, ...]: ...

    def tag_each(self, images: Sequence[np.ndarray]) -> list[tuple[str, ...]]:
        """Each image's own tags, in the tagger's order (the official top-1 rule tags image by image)."""
        ...


@dataclass(frozen=True)
class TaggerSpec:
    backend: str = "clip"
    weights: str = ""
    tags: tuple[str, ...] = ()  # the fixed backend's tags
    top_k: int = 4
    min_score: float = 0.0  # CLIP: minimum softmax probability over the vocabulary
    vocabulary: tuple[str, ...] = field(default_factory=tuple)  # empty: the shipped vocabulary
    device: str = "cpu"
    resample: str = "bilinear"  # RAM's resize: recognize-anything's own (bilinear) or IAP-ZSAS's (bicubic)


TAGGERS: Registry[Callable[[TaggerSpec], Tagger]] = Registry("tagger backend")


class FixedTagger:
    """The tags the user gave (or the category name): no model at all."""

    def __init__(self, tags: Sequence[str]) -> None:
        self.tags = unique_prompts(tags)
        self.model_id = "fixed"

    def tag(self, images: Sequence[np.ndarray]) -> tuple[str, ...]:
        return self.tags

    def tag_each(self, images: Sequence[np.ndarray]) -> list[tuple[str, ...]]:
        return [self.tags for _ in images]


class ClipTagger:
    """Ranks a vocabulary by CLIP image-text similarity, averaged over the images; keeps the top k."""

    def __init__(self, backbone: ClipBackbone, vocabulary: Sequence[str], top_k: int, min_score: float) -> None:
        self.backbone = backbone
        self.vocabulary = tuple(vocabulary)
        self.top_k, self.min_score = top_k, min_score
        self.model_id = f"clip:{backbone.name}"
        self._text = self._embed_vocabulary()

    @torch.inference_mode()
    def _embed_vocabulary(self) -> torch.Tensor:
        """(V, D) unit text embeddings, each word averaged over the prompt templates; computed once."""
        sentences = [template.format(word) for word in self.vocabulary for template in CLIP_TAG_TEMPLATES]
        features = self.backbone.encode_text(sentences).view(len(self.vocabulary), len(CLIP_TAG_TEMPLATES), -1)
        return torch.nn.functional.normalize(features.mean(dim=1), dim=-1)

    @torch.inference_mode()
    def scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(V,) mean softmax probability of each vocabulary word over the images (CLIP's own resize and crop)."""
        clip, device = self.backbone.clip, self.backbone.device
        pixels = self.backbone.image_processor(images=[np.array(image) for image in images], return_tensors="pt")["pixel_values"]
        features = clip.get_image_features(pixel_values=pixels.to(device))
        features = torch.nn.functional.normalize(getattr(features, "pooler_output", features).float(), dim=-1)
        logits = self.backbone.logit_scale() * features @ self._text.T
        return logits.softmax(dim=-1).mean(dim=0).cpu().numpy()

    def _top(self, probabilities: np.ndarray) -> tuple[str, ...]:
        order = np.argsort(-probabilities, kind="stable")[: self.top_k]
        return tuple(self.vocabulary[i] for i in order if probabilities[i] >= self.min_score)

    def tag(self, images: Sequence[np.ndarray]) -> tuple[str, ...]:
        return self._top(self.scores(images))

    def tag_each(self, images: Sequence[np.ndarray]) -> list[tuple[str, ...]]:
        return [self._top(self.scores([image])) for image in images]


RAM_RESAMPLING = ("bilinear", "bicubic")  # PIL filters: recognize-anything's own, and IAP-ZSAS's


class RamTagger:
    """Recognize Anything (RAM or RAM++, iapas's own implementation) from a released checkpoint.

    Each image gets the tags whose probability exceeds that tag's threshold, in the tag list's order, as
    recognize-anything's `ram/models/ram.py` generate_tag returns them.
    """

    def __init__(self, path: Path, device: str, resample: str = "bilinear") -> None:
        from .ram import class_thresholds, load_ram_model, tag_list

        require_path(path, "RAM", expect_dir=False)
        warn_if_demo(path)
        if resample not in RAM_RESAMPLING:
            raise ConfigError(f"unknown RAM resampling {resample!r}: {' | '.join(RAM_RESAMPLING)}")
        self.model = load_ram_model(path, device)
        self.tags, self.thresholds = tag_list(), class_thresholds(self.model.shape.classes).to(device)
        self.size, self.resample, self.device = self.model.shape.swin.image_size, resample, device
        self.model_id = f"ram:{Path(path).name}"

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S) model input: RGB resized to S x S with PIL, scaled to [0, 1], ImageNet-normalised.

        ram/transform.py get_transform: Resize((384, 384)) on the PIL image (bilinear), ToTensor, Normalize.
        IAP-ZSAS (util/function.py load_image) resizes with PIL's default (bicubic) first, which the
        official recipe follows (resample "bicubic").
        """
        from PIL import Image

        from .ram.model import IMAGE_MEAN, IMAGE_STD

        resample = getattr(Image.Resampling, self.resample.upper())
        resized = Image.fromarray(np.asarray(image)).convert("RGB").resize((self.size, self.size), resample)
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        x = (x - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]
        return x.unsqueeze(0).to(self.device)

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """(classes,) tag logits of one image."""
        return self.model(self.pixels(image))[0]

    def tags_of(self, logits: torch.Tensor) -> tuple[str, ...]:
        """The tags one image's logits give, in the tag list's order."""
        # ram.py generate_tag: a tag is kept when sigmoid(logit) > its class threshold (strictly)
        kept = torch.nonzero(logits.sigmoid() > self.thresholds).flatten().tolist()
        return tuple(self.tags[i] for i in kept)

    def tag_each(self, images: Sequence[np.ndarray]) -> list[tuple[str, ...]]:
        return [self.tags_of(self.logits(image)) for image in images]

    def tag(self, images: Sequence[np.ndarray]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for tags in self.tag_each(images) for t in tags))


@TAGGERS.register("fixed")
def load_fixed(spec: TaggerSpec) -> Tagger:
    return FixedTagger(spec.tags)


@TAGGERS.register("clip")
def load_clip_tagger(spec: TaggerSpec) -> Tagger:
    if not spec.weights:
        raise WeightsError("the CLIP tagger needs a CLIP model directory (--clip DIR; see manifest entry 'clip-vit-b-16')")
    backbone = ClipBackbone(Path(spec.weights), spec.device)
    return ClipTagger(backbone, spec.vocabulary or tag_vocabulary(), spec.top_k, spec.min_score)


@TAGGERS.register("ram")
def load_ram(spec: TaggerSpec) -> Tagger:
    if not spec.weights:
        raise WeightsError("the RAM tagger needs its checkpoint (--tagger-weights ram_swin_large_14m.pth; see `iapas weights list`)")
    return RamTagger(Path(spec.weights), spec.device, spec.resample)
