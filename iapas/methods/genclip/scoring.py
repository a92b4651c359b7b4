"""GenCLIP's map combination (Eq. 8) and its image score from the top of the map (Eq. 9-10)."""
from __future__ import annotations

import numpy as np
import torch

ALPHA = 0.8  # B.4: weight of the vision-enhanced branch in Eq. 8
SIGMA = 9.0  # B.4: Gaussian smoothing G(.) of Eq. 8, in pixels of the 518 px map (zqhang/AnomalyCLIP test.py also
# smooths its layer-summed map at its input size, before any resizing)
TOP_N1 = 500  # B.4: N1 of Eq. 9-10
TOP_N2 = 2500  # B.4: N2 of Eq. 9


def combine_branches(vision_maps: torch.Tensor, query_maps: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """Eq. 8 before smoothing: alpha * sum_i S_V^i + (1 - alpha) * sum_i S_Q^i over the layer axis (-3).

    The paper sums (not averages) over the L layers, so the result lies in [0, L] for maps in [0, 1].
    """
    return alpha * vision_maps.sum(dim=-3) + (1 - alpha) * query_maps.sum(dim=-3)


def top_n_image_score(seg_map: np.ndarray, n1: int = TOP_N1, n2: int = TOP_N2) -> float:
    """Eq. 9-10: w = mean(exp(top N1)) / mean(exp(top N2)); S_det = w * mean(top N1).

    N1 and N2 are capped at the number of pixels (a map smaller than 2500 pixels); w is computed with
    the maximum subtracted inside exp, which leaves the ratio unchanged and avoids overflow.
    """
    values = np.sort(np.asarray(seg_map, np.float64).ravel())[::-1]
    n1, n2 = min(n1, values.size), min(n2, values.size)
    shifted = np.exp(values[:n2] - values[0])
    weight = shifted[:n1].mean() / shifted.mean()
    return float(weight * values[:n1].mean())
