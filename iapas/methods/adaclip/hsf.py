"""Hybrid semantic fusion (HSF): AdaCLIP's image-level embedding from its most anomalous patches.

This is the reference's current version (caoyunkang/AdaCLIP method/adaclip.py `HybridSemanticFusion`,
which notes that it differs from the paper's): the 5k most anomalous patches by the layer-averaged map
are clustered with k-means on the four layers' features side by side, each cluster's centre is the
mean of its patches over all layers, and the k centres are averaged into one unit embedding; the image
embedding is then 0.2 x that + 0.8 x the class-token embedding (`visual_text_similarity`).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

HSF_CLUSTERS = 20  # caoyunkang/AdaCLIP train.py --k_clusters
PATCHES_PER_CLUSTER = 5  # method/adaclip.py: n_aggregate_patch_tokens = k_clusters * 5 (top 100 patches)
HSF_ALPHA = 0.2  # method/adaclip.py `visual_text_similarity`: alpha * clustered + (1 - alpha) * class token
KMEANS_SEED = 111  # the reference's KMeans draws from the global seed (setup_seed(111)); a fixed one makes runs repeat


def cluster_centre(layer_patches: Sequence[torch.Tensor], anomaly: torch.Tensor, clusters: int = HSF_CLUSTERS,
                   seed: int = KMEANS_SEED) -> torch.Tensor:
    """(E,) unit mean of the k-means centres of the most anomalous patches of one image.

    `layer_patches`: per feature layer, (N, E) unit patch embeddings; `anomaly`: (N,) anomaly probability
    of the layer-averaged logits. Fewer patches than clusters (tiny grids) lower k to the patch count.
    Gradients reach the patch embeddings through the centres; the cluster assignment is fixed.
    """
    from sklearn.cluster import KMeans

    top = torch.topk(anomaly, k=min(len(anomaly), clusters * PATCHES_PER_CLUSTER)).indices
    selected = [patches[top] for patches in layer_patches]  # per layer (K, E)
    features = torch.cat(selected, dim=1).detach().float().cpu().numpy()
    k = min(clusters, len(features))
    with warnings.catch_warnings():  # identical points (random test models) make fewer distinct clusters than k
        warnings.simplefilter("ignore")
        labels = KMeans(n_clusters=k, n_init="auto", random_state=seed).fit_predict(features)
    stacked = torch.stack(selected)  # (layers, K, E)
    centres = [stacked[:, torch.from_numpy(labels == c).to(stacked.device)].reshape(-1, stacked.shape[-1]).mean(0)
               for c in range(k) if (labels == c).any()]
    return F.normalize(torch.stack(centres).mean(0), dim=-1)


def fuse(centre: torch.Tensor, cls_embedding: torch.Tensor, alpha: float = HSF_ALPHA) -> torch.Tensor:
    """Unit image embedding from the clustered centre and the (unit) class-token embedding."""
    return F.normalize(alpha * centre + (1 - alpha) * cls_embedding, dim=-1)
