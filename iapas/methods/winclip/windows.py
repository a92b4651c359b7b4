"""Sliding windows over the patch grid, their CLIP embeddings, and folding window scores back onto patches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone

WINDOW_BATCH = 256  # windows encoded per forward pass
DEFAULT_SCALES = (2, 3)  # WinCLIP paper Sec. 4 on ViT-B/16+ at 240 px; caoyunkang eval_WinCLIP.py --scales 2 3


def sliding_windows(grid: int, size: int, stride: int = 1) -> np.ndarray:
    """(W, size*size) patch indices of every size x size window on a grid x grid patch map, row-major.

    The order is the references' (caoyunkang WinCLIP/CLIPAD/transformer.py `generate_window_masks`: rows, then
    columns, stride 1; anomalib utils.py `make_masks` unfolds the same windows in the same order).
    """
    starts = range(0, grid - size + 1, stride)
    windows = [
        [(row + dy) * grid + (col + dx) for dy in range(size) for dx in range(size)] for row in starts for col in starts
    ]
    return np.array(windows, dtype=np.int64).reshape(-1, size * size)


def patch_mean(window_values: torch.Tensor, windows: np.ndarray, patches: int) -> torch.Tensor:
    """(patches,) arithmetic mean, per patch, of the values of the windows covering it (NaN where none does)."""
    index = torch.as_tensor(windows, device=window_values.device)
    total = torch.zeros(patches, dtype=window_values.dtype, device=window_values.device)
    count = torch.zeros_like(total)
    total.index_add_(0, index.reshape(-1), window_values.repeat_interleave(index.shape[1]))
    count.index_add_(0, index.reshape(-1), torch.ones(index.numel(), dtype=total.dtype, device=total.device))
    return total / count


def harmonic(window_scores: torch.Tensor, windows: np.ndarray, patches: int) -> torch.Tensor:
    """(patches,) harmonic mean, per patch, of the scores of the windows covering it (0 where none does or a score is 0).

    anomalib utils.py harmonic_aggregation; caoyunkang WinCLIP/model.py accumulates the same 1/score sums.
    """
    return (1.0 / patch_mean(1.0 / window_scores, windows, patches)).nan_to_num(0.0, posinf=0.0)


@dataclass(frozen=True)
class WindowFeatures:
    """One image through the visual encoder: the whole image, every window of every scale, and the patch tokens.

    image: (E,) projected class embedding of the whole image; windows: per scale, (W_s, E) projected class
    embeddings of the windows; patches: (P, D) post-normed, unprojected last-layer patch tokens.
    """

    image: torch.Tensor
    windows: tuple[torch.Tensor, ...]
    patches: torch.Tensor


def encode_windows(backbone: ClipBackbone, pixels: torch.Tensor, scales: Sequence[int]) -> WindowFeatures:
    """Class, window and patch embeddings of one preprocessed image (1, 3, S, S) (see `encode_windows_batch`)."""
    return encode_windows_batch(backbone, pixels, scales)[0]


def encode_windows_batch(backbone: ClipBackbone, pixels: torch.Tensor, scales: Sequence[int]) -> list[WindowFeatures]:
    """Class, window and patch embeddings of each preprocessed image of a batch (B, 3, S, S).

    The whole images go through CLIP in one forward; each image's windows then go WINDOW_BATCH at a time.
    A window is the class token followed by the patch tokens inside it (positional embeddings already added),
    run through the whole transformer alone: the token masks of caoyunkang WinCLIP/CLIPAD/transformer.py
    `WindowVisionTransformer.forward` / `window_masking`, and anomalib torch_model.py `_get_window_embeddings`.
    """
    tokens = backbone.tokens(pixels)
    grid = backbone.grid
    images, hidden = backbone.encode_tokens(tokens, (backbone.depth,))
    patches = backbone.patch_features(hidden[0])
    features = []
    for index, own in enumerate(tokens):
        per_scale = []
        for size in scales:
            windows = sliding_windows(grid, size)
            embeddings = []
            for start in range(0, len(windows), WINDOW_BATCH):
                chunk = torch.as_tensor(windows[start:start + WINDOW_BATCH], device=own.device)
                window_tokens = torch.cat([own[0].expand(len(chunk), 1, -1), own[1:][chunk]], dim=1)
                embeddings.append(backbone.encode_tokens(window_tokens)[0].float())
            per_scale.append(torch.cat(embeddings))
        features.append(WindowFeatures(images[index].float(), tuple(per_scale), patches[index].float()))
    return features


def unit(features: torch.Tensor) -> torch.Tensor:
    """Features scaled to unit length along the last axis (cosine similarity is a product of these)."""
    return F.normalize(features, dim=-1)
