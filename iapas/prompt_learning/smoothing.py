"""Gaussian smoothing of anomaly maps, as the CLIP methods' test code applies it."""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def gaussian_smooth(heat: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray:
    """(H, W) float32 map smoothed with a Gaussian of standard deviation `sigma` pixels (0: unchanged).

    scipy's `gaussian_filter` with its defaults (reflect borders, truncate 4.0) is what AdaCLIP,
    AnomalyCLIP and FAPrompt call in their test scripts.
    """
    array = heat.detach().float().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, np.float32)
    if sigma <= 0:
        return array.astype(np.float32)
    return gaussian_filter(array, sigma=sigma).astype(np.float32)
