"""WinCLIP and WinCLIP+ on a frozen CLIP: windows scored against a prompt ensemble, optionally a K-shot visual memory."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...backends.clip import ClipBackbone
from ...errors import ConfigError, IapasError
from ...types import Boxes, Masks, Result
from .variants import VARIANTS, Gallery, Variant, text_embeddings
from ..batching import BatchedMethod, timed
from .windows import DEFAULT_SCALES, WindowFeatures, encode_windows, encode_windows_batch, sliding_windows

DEFAULT_VARIANT = "caoyunkang"  # the implementation IAP-AS Table 1 ran (github caoyunkang/WinClip)
DEFAULT_SEED = 111  # IAP-AS test_zsas.py setup_seed, also caoyunkang eval_WinCLIP.py's first seed


def draw_references(pool: Sequence[Path], shots: int, seed: int, where: str) -> list[Path]:
    """`shots` normal images drawn from `pool` with `seed` (the same ones on every run)."""
    pool = sorted(pool)
    if len(pool) < shots:
        raise IapasError(f"--shots {shots} needs {shots} normal reference images; {where} has {len(pool)}")
    return sorted(random.Random(seed).sample(pool, shots))


@dataclass
class WinClip(BatchedMethod):
    """WinCLIP (`shots` = 0) or WinCLIP+ (K reference images) under the rules of one reimplementation.

    `variant` is "caoyunkang" (default; IAP-AS Table 1) or "anomalib"; `scales` are window sizes in patches.
    Few-shot references come from `set_references`, or in `prepare` from `reference_dir` (else the category's
    normal training images), `shots` of them drawn with `seed`.
    """

    backbone: ClipBackbone
    class_name: str = "object"
    variant: str = DEFAULT_VARIANT
    scales: Sequence[int] = DEFAULT_SCALES
    shots: int = 0
    reference_dir: Path | None = None
    seed: int = DEFAULT_SEED
    name: str = "winclip"
    rules: Variant = field(init=False)
    text: torch.Tensor = field(init=False)
    windows: list[np.ndarray] = field(init=False)
    gallery: Gallery | None = field(init=False, default=None)
    references: tuple[Path, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.rules = VARIANTS.get(self.variant)()
        self.scales = tuple(int(size) for size in self.scales)
        grid = self.backbone.grid
        if not self.scales or any(not 1 <= size <= grid for size in self.scales):
            raise ConfigError(f"WinCLIP window sizes must be between 1 and the {grid}x{grid} patch grid, got {list(self.scales)}")
        if self.shots < 0:
            raise ConfigError(f"--shots must be 0 (zero-shot) or more, got {self.shots}")
        self.windows = [sliding_windows(grid, size) for size in self.scales]
        self.set_class(self.class_name)

    @torch.inference_mode()
    def set_class(self, class_name: str) -> None:
        """Embed the variant's prompt ensemble for this class name (used as given, underscores included, as both references do)."""
        self.class_name = class_name
        self.text = text_embeddings(self.backbone, self.rules.prompts, class_name)

    @torch.inference_mode()
    def set_references(self, images: Sequence[np.ndarray]) -> None:
        """Build the visual memory from normal RGB images (none: back to zero-shot)."""
        pixels = [self.rules.preprocess(self.backbone, image, reference=True) for image in images]
        features = encode_windows_batch(self.backbone, torch.cat(pixels), self.scales) if pixels else []
        self.gallery = Gallery.of(features) if features else None

    @torch.inference_mode()
    def score(self, image: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(grid, grid) patch-level map of one RGB image, and the variant's own image score (None: the map's maximum)."""
        pixels = self.rules.preprocess(self.backbone, image, reference=False)
        return self._scored(encode_windows(self.backbone, pixels, self.scales))

    def _scored(self, features: WindowFeatures) -> tuple[np.ndarray, float | None]:
        scored = self.rules.score(features, self.text, self.windows, self.gallery)
        grid = self.backbone.grid
        return scored.patch_map.reshape(grid, grid).cpu().numpy().astype(np.float32), scored.image_score

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> tuple[list[WindowFeatures], dict[str, float]]:
        """Each image as the variant preprocesses it, the whole images in one CLIP forward, then each image's windows."""
        start = time.perf_counter()
        pixels = torch.cat([self.rules.preprocess(self.backbone, image, reference=False) for image in images])
        features = encode_windows_batch(self.backbone, pixels, self.scales)
        return features, {"window_scoring": time.perf_counter() - start}

    @torch.inference_mode()
    def finish(self, image: np.ndarray, features: WindowFeatures, timings: dict[str, float]) -> Result:
        """Map at the image's resolution (the variant's up-sampling) and the variant's image score."""
        start = time.perf_counter()
        patch_map, image_score = self._scored(features)
        start = timed(timings, "window_scoring", start)
        height, width = image.shape[:2]
        heat = self.rules.upsample(torch.from_numpy(patch_map), self.backbone, height, width).numpy().astype(np.float32)
        timed(timings, "upsampling", start)
        score = float(heat.max()) if image_score is None else image_score  # caoyunkang utils/metrics.py: map maximum
        return Result(heat, Boxes.empty(), Masks.empty(height, width), (self.class_name,), timings, self.name, score)

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Prompts for the category; with `shots`, the memory of normal images drawn with the seed."""
        from ...images import load_image
        from ..references import reference_pool

        self.set_class(category)
        if self.reference_dir is not None and not self.shots:
            raise IapasError("--reference-images needs --shots K (the paper uses K = 1, 2 or 4)")
        if not self.shots:
            return
        pool, where = reference_pool(self.reference_dir, normal_images, self.shots, category)
        chosen = draw_references(pool, self.shots, self.seed, where)
        if tuple(chosen) != self.references:
            self.set_references([load_image(path).pixels for path in chosen])
            self.references = tuple(chosen)
