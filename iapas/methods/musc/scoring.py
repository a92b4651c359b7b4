"""MuSc's three scoring modules on features: LNAMD (aggregation), MSM (mutual scoring), RsCIN (image re-scoring).

Each works on plain tensors, so the equality test can hand the official modules the same features.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# configs/musc.yaml and scripts/musc.sh: r_list 1 3 5; models/musc.py: MSM(topmin_min=0, topmin_max=0.3)
DEFAULT_DEGREES = (1, 3, 5)
INTERVAL = (0.0, 0.3)
# models/musc.py make_category_data: RsCIN's k_score per dataset; other datasets take the last branch, [1, 2, 3]
RSCIN_NEIGHBOURS = {"mvtec": (1, 2, 3), "visa": (1, 8, 9), "btad": (1, 2, 3)}
DEFAULT_NEIGHBOURS = (1, 2, 3)
DIVIDE_SEED = 42  # examples/musc_main.py: MuSc(cfg, seed=42), the seed datasets/*.py sub_datasets shuffles with
CHUNK_BYTES = 256 << 20  # the distance block one query image holds at a time (the reference holds all N - 1 images)


def aggregate(layers: Sequence[torch.Tensor], degree: int) -> torch.Tensor:
    """LNAMD: (N, P, L, C) unit patch features from L layers of (N, P, C) patch tokens (square grid, class token dropped).

    modules/_LNAMD.py `_embed`: each layer's (C, g, g) map is layer-normalised as a whole (a fresh LayerNorm: no
    affine change), each patch becomes the mean of its r x r neighbourhood per channel (an unfold with zero padding
    of (r - 1) / 2, then `adaptive_avg_pool1d` of the C*r*r values to C, which averages each channel's r*r values;
    the padding zeros count); models/musc.py then divides each feature by its norm.
    """
    out = []
    for tokens in layers:
        count, patches, channels = tokens.shape
        grid = round(patches ** 0.5)
        maps = tokens.float().reshape(count, grid, grid, channels).permute(0, 3, 1, 2)
        maps = F.layer_norm(maps, maps.shape[1:])
        if degree > 1:
            maps = F.avg_pool2d(maps, degree, stride=1, padding=(degree - 1) // 2, count_include_pad=True)
        out.append(maps.flatten(2).transpose(1, 2))
    features = torch.stack(out, dim=2)
    return features / features.norm(dim=-1, keepdim=True)


def interval_count(others: int, fraction: float) -> int:
    """modules/_MSM.py: a fraction below 1 of the other images, truncated to a whole number of them."""
    return int(others * fraction) if fraction < 1 else int(fraction)


def mutual_scores(features: torch.Tensor, interval: tuple[float, float] = INTERVAL, chunk_bytes: int = CHUNK_BYTES,
                  progress=None) -> torch.Tensor:
    """MSM: (N, P) float64 anomaly scores of every patch, scored by the N - 1 other images of the set.

    modules/_MSM.py `compute_scores_fast`: a patch's score against another image is its distance to the nearest
    of that image's patches; its anomaly score is the mean of those N - 1 scores between the `interval` fractions
    of the sorted list (0 to 0.3: the lowest 30 %). The reference measures one query image against the N - 1
    others in one (P, (N - 1) * P) block; here the others come in chunks of `chunk_bytes`, so memory stays
    bounded whatever N is, and each chunk keeps only its per-image minima.
    """
    count, patches, channels = features.shape
    low, high = (interval_count(count - 1, bound) for bound in interval)
    low, high = min(low, high), max(low, high)
    per_chunk = max(1, chunk_bytes // max(1, patches * patches * features.element_size()))
    scores = torch.empty(count, patches, dtype=torch.float64, device=features.device)
    for query in range(count):
        nearest = torch.empty(patches, count, dtype=features.dtype, device=features.device)
        for start in range(0, count, per_chunk):
            others = features[start:start + per_chunk]
            distances = torch.cdist(features[query], others.reshape(-1, channels))
            nearest[:, start:start + len(others)] = distances.view(patches, len(others), patches).amin(-1)
        nearest = torch.cat([nearest[:, :query], nearest[:, query + 1:]], dim=1)  # an image never scores itself
        lowest = nearest.float().sort(dim=1).values[:, low:high]
        scores[query] = lowest.mean(dim=1).double()
        if progress is not None:
            progress()
    return scores


def rescore(scores: np.ndarray, class_tokens: np.ndarray, neighbours: Sequence[int] = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """RsCIN: each image's score averaged over its k most similar images (class-token dot products), averaged over k.

    modules/_RsCIN.py: scores are min-max normalised first; `MMO` keeps the k largest similarities of each row
    (itself included), row-normalises them and takes the weighted mean of the scores, once per k, then averages.
    Chosen where the source is silent: equal scores normalise to zeros (the reference divides by zero), and a
    k larger than the set keeps every image (the reference's `topk` fails).
    """
    if 0 in neighbours:  # modules/_RsCIN.py: k = 0 turns re-scoring off
        return np.asarray(scores)
    scores = np.asarray(scores, dtype=np.float64)
    spread = scores.max() - scores.min()
    normalised = (scores - scores.min()) / spread if spread > 0 else np.zeros_like(scores)
    similarity = torch.from_numpy(np.asarray(class_tokens) @ np.asarray(class_tokens).T).float()
    values = torch.from_numpy(normalised).float()
    count = len(values)
    rows = []
    for k in neighbours:
        kept = torch.topk(similarity, min(k, count), dim=1).indices
        weights = torch.zeros_like(similarity).scatter(1, kept, similarity.gather(1, kept))
        rows.append((weights / weights.sum(dim=1, keepdim=True)) @ values)
    return torch.stack(rows, dim=-1).mean(-1).numpy()


def subsets(groups: Sequence[str], divide: int, seed: int = DIVIDE_SEED) -> list[list[int]]:
    """`divide` disjoint subsets of the set's indices, spread evenly over the groups (the images' folders).

    datasets/mvtec.py `sub_datasets`: per group (first-seen order), the indices are shuffled after `random.seed(seed)`, cut into runs of `divide`, and subset d takes the d-th index of every run that has one.
    """
    if divide <= 1:
        return [list(range(len(groups)))]
    rng = random.Random(seed)  # the reference's random.seed(seed) then random.shuffle: the same draws, no global state
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    shuffled = []
    for indices in by_group.values():
        rng.shuffle(indices)
        shuffled.append([indices[start:start + divide] for start in range(0, len(indices), divide)])
    return [[run[part] for runs in shuffled for run in runs if len(run) > part] for part in range(divide)]
