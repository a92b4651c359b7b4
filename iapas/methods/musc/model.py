"""MuSc on a frozen ViT (CLIP or DINOv2): a set of unlabelled images scores each other's patches."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, IapasError
from ...types import Boxes, Masks, Result
from ..batching import rgb_pixels
from .scoring import (CHUNK_BYTES, DEFAULT_DEGREES, DEFAULT_NEIGHBOURS, INTERVAL, RSCIN_NEIGHBOURS, aggregate, interval_count,
                      mutual_scores, rescore, subsets)

PAPER_SIZE = 518  # configs/musc.yaml img_resize: 518 (37 x 37 patches of ViT-L-14-336)
OTHER_PATCH_SIZE = 512  # scripts/musc.sh runs the patch-16 and patch-32 CLIPs at 512 (518 is no multiple of 16)


def min_set_size(interval: tuple[float, float] = INTERVAL) -> int:
    """The fewest images MSM can score: the interval must hold at least one of the other images' scores.

    With the reference's 0 to 0.3, int(0.3 * (N - 1)) >= 1 needs N >= 5; below it the reference averages an
    empty list (NaN maps), so iapas refuses the set instead.
    """
    count = 2
    while True:
        low, high = (interval_count(count - 1, bound) for bound in interval)
        if abs(high - low) >= 1:
            return count
        count += 1


def default_layers(depth: int) -> tuple[int, ...]:
    """The four evenly spaced blocks the reference's scripts use (1-based): 6 12 18 24 of 24, 3 6 9 12 of 12.

    configs/musc.yaml feature_layers [5, 11, 17, 23] (0-based, ViT-L); scripts/musc.sh 2 5 8 11 for ViT-B.
    """
    return tuple(sorted({max(1, depth * quarter // 4) for quarter in range(1, 5)}))  # fewer than 4 blocks: each once


class Features(Protocol):
    """What MuSc reads from a backbone: per-layer patch tokens and a unit image embedding per image."""

    name: str
    patch_size: int

    def encode(self, images: Sequence[np.ndarray], size: int, layers: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]: ...


class ClipFeatures:
    """models/musc.py, CLIP branch: residual-stream tokens after the chosen blocks, and the normalised projected class token."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.name, self.patch_size, self.depth = backbone.name, backbone.patch_size, backbone.depth

    def encode(self, images: Sequence[np.ndarray], size: int, layers: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        # open_clip transform.py image_transform (eval): Resize((S, S), bicubic) on the PIL image, then CLIP's mean and std
        pixels = self.backbone.preprocess(images, size)
        with self.backbone.autocast():
            pooled, hidden = self.backbone.encode_tokens(self.backbone.tokens(pixels), layers)
        pooled = pooled.float()
        return [tokens[:, 1:].float() for tokens in hidden], pooled / pooled.norm(dim=-1, keepdim=True)


class DinoFeatures:
    """models/musc.py, DINOv2 branch: `get_intermediate_layers(norm=True)` patch tokens and the normed class token."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.name, self.patch_size, self.depth = backbone.name, backbone.patch_size, backbone.depth

    def encode(self, images: Sequence[np.ndarray], size: int, layers: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        # datasets/mvtec.py without a CLIP transform: Resize((S, S)) (PIL bilinear), CenterCrop(S), ImageNet mean and std
        pixels = self.backbone.normalise(self.backbone.resized(images, (size, size), "bilinear"))
        patches, cls = self.backbone.normed_layers(pixels, layers)
        return [tokens.float() for tokens in patches], cls.float()


@dataclass
class MuSc:
    """MuSc (Li et al., ICLR 2024): zero-shot, prompt-free; the images of a set score each other.

    `degrees` are LNAMD's r, `layers` the 1-based blocks read (default: the four quarters), `size` the input side
    (0: 518 where the patch size divides it, else 512), `divide` the number of subsets a set is split into
    (models/musc.py divide_num), `neighbours` RsCIN's k list (None: the dataset's, else [1, 2, 3]).
    """

    features: Features
    degrees: Sequence[int] = DEFAULT_DEGREES
    layers: Sequence[int] = ()
    size: int = 0
    divide: int = 1
    neighbours: Sequence[int] | None = None
    batch_size: int = 4  # scripts/musc.sh --batch_size 4: images per backbone forward
    chunk_bytes: int = CHUNK_BYTES
    name: str = "musc"
    default_image_score: str = "method"  # RsCIN's re-scored image score, as models/musc.py evaluates it
    dataset: str = ""
    progress: Callable[[str, int], Callable[[], None]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.layers = tuple(int(layer) for layer in self.layers) or default_layers(self.features.depth)
        self.features.backbone.require_layers(self.layers)
        self.degrees = tuple(int(r) for r in self.degrees)
        if not self.degrees or any(r < 1 or r % 2 == 0 for r in self.degrees):
            raise ConfigError(f"MuSc's aggregation degrees must be odd whole numbers of at least 1 (paper: 1 3 5), got {list(self.degrees)}")
        if self.divide < 1:
            raise ConfigError(f"musc.divide must be 1 (no split) or more, got {self.divide}")
        patch = self.features.patch_size
        self.size = int(self.size) or (PAPER_SIZE if PAPER_SIZE % patch == 0 else OTHER_PATCH_SIZE)
        if self.size % patch:
            raise ConfigError(f"musc.image_size {self.size} is not a multiple of {self.features.name!r}'s patch size {patch}")

    @property
    def min_images(self) -> int:
        return min_set_size()

    def use_dataset(self, dataset: str) -> None:
        """Take the dataset's RsCIN neighbourhoods (models/musc.py: visa 1 8 9, mvtec and btad 1 2 3)."""
        self.dataset = dataset

    def prepare(self, category: str, normal_images, kind: str, out_dir) -> None:
        """Nothing to prepare: MuSc needs neither prompts nor normal images."""

    def rscin_neighbours(self) -> tuple[int, ...]:
        if self.neighbours is not None:
            return tuple(self.neighbours)
        key = self.dataset.lower().replace("_ad", "").replace("-ad", "")
        return RSCIN_NEIGHBOURS.get(key, DEFAULT_NEIGHBOURS)

    def segment(self, image: np.ndarray) -> Result:
        raise IapasError(f"MuSc scores a set of at least {self.min_images} images together, not one image: "
                         "give a folder (iapas segment FOLDER) or a list (MuSc.segment_set)")

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every image's per-layer patch tokens (N, P, C) and unit class token (N, D), `batch_size` per forward."""
        layers: list[list[torch.Tensor]] = [[] for _ in self.layers]
        tokens = []
        for start in range(0, len(images), self.batch_size):
            patches, cls = self.features.encode(images[start:start + self.batch_size], self.size, self.layers)
            for kept, layer in zip(layers, patches):
                kept.append(layer.cpu())
            tokens.append(cls.cpu())
        return [torch.cat(layer) for layer in layers], torch.cat(tokens)

    @torch.inference_mode()
    def score_features(self, layers: Sequence[torch.Tensor], class_tokens: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """(N, P) float64 patch scores and (N,) RsCIN image scores of one set's features.

        models/musc.py make_category_data: for each r, MSM per layer, the layers averaged; then the r averaged.
        Aggregation runs one layer at a time, so only one layer's (N, P, C) features are held.
        """
        count = len(class_tokens)
        if count < self.min_images:
            raise IapasError(f"MuSc needs a set of at least {self.min_images} images (it scores each image against the "
                             f"others' lowest 30 %), got {count}")
        device = self.features.backbone.device
        tick = self.progress("mutual scoring", len(self.degrees) * len(layers) * count) if self.progress else None
        per_degree = []
        for degree in self.degrees:
            per_layer = []
            for tokens in layers:
                aggregated = torch.cat([aggregate([tokens[start:start + 16].to(device)], degree)[:, :, 0]
                                        for start in range(0, count, 16)])
                per_layer.append(mutual_scores(aggregated, INTERVAL, self.chunk_bytes, tick).cpu())
            per_degree.append(torch.stack(per_layer).mean(0))
        patch_scores = torch.stack(per_degree).mean(0)
        # models/musc.py: the image score before RsCIN is the maximum of the map up-sampled (bilinear, align_corners=True)
        # to the input size; that grid rarely passes through every patch centre, so it is not the patches' maximum
        grid = round(patch_scores.shape[1] ** 0.5)
        maxima = np.array([F.interpolate(scores.view(1, 1, grid, grid), size=self.size, mode="bilinear", align_corners=True).max().item()
                           for scores in patch_scores])
        image_scores = rescore(maxima, class_tokens.numpy(), self.rscin_neighbours())
        return patch_scores, image_scores

    def segment_set(self, images: Sequence[np.ndarray], groups: Sequence[str] | None = None) -> list[Result]:
        """Every image's Result, the images scored as one set (or `divide` subsets drawn evenly from the `groups`)."""
        images = [rgb_pixels(image) for image in images]
        start = time.perf_counter()
        layers, class_tokens = self.encode(images)
        encoded = time.perf_counter()
        patch_scores = torch.empty(len(images), layers[0].shape[1], dtype=torch.float64)
        image_scores = np.empty(len(images))
        for part in subsets(list(groups) if groups is not None else [""] * len(images), self.divide):
            index = torch.tensor(part)
            patches, scores = self.score_features([layer[index] for layer in layers], class_tokens[index])
            patch_scores[index] = patches
            image_scores[part] = scores
        scored = time.perf_counter()
        shares = {"feature_extraction": (encoded - start) / len(images), "mutual_scoring": (scored - encoded) / len(images)}
        return [self.result(image, patch_scores[i], float(image_scores[i]), dict(shares)) for i, image in enumerate(images)]

    def segment_outcomes(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[Result | Exception]:
        """The engines' batched entry point: the images handed over are one set (a failure is every image's)."""
        try:
            return list(self.segment_set(images))
        except Exception as error:  # noqa: BLE001 - the set is one unit: its failure is each image's
            return [error] * len(images)

    def result(self, image: np.ndarray, patch_scores: torch.Tensor, image_score: float, timings: dict[str, float]) -> Result:
        """The map at the image's resolution and the RsCIN image score.

        models/musc.py up-samples the grid with bilinear, align_corners=True, to the input size; here to the image's
        own size (chosen: the Result is at the input resolution). The scores are distances between unit vectors,
        in [0, 2]: halved into the Result's [0, 1] (a fixed scale, so every ranking metric is unchanged).
        """
        start = time.perf_counter()
        grid = round(len(patch_scores) ** 0.5)
        height, width = image.shape[:2]
        heat = F.interpolate(patch_scores.view(1, 1, grid, grid), size=(height, width), mode="bilinear", align_corners=True)
        heat = (heat[0, 0] / 2).clamp(0, 1).numpy().astype(np.float32)
        timings["upsampling"] = time.perf_counter() - start
        return Result(heat, Boxes.empty(), Masks.empty(height, width), (), timings, self.name, image_score)
