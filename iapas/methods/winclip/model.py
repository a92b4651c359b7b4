"""Zero-shot WinCLIP: compositional prompt ensemble, multi-scale windows and harmonic aggregation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...types import Boxes, Masks, Result
from ...backends.clip import ClipBackbone

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage")
ANOMALOUS_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)
WINDOW_BATCH = 256  # windows encoded per forward pass


def prompt_ensemble(class_name: str) -> tuple[list[str], list[str]]:
    """All (state x template) sentences for the normal and the anomalous class."""
    normal = [t.format(s.format(class_name)) for s in NORMAL_STATES for t in TEMPLATES]
    anomalous = [t.format(s.format(class_name)) for s in ANOMALOUS_STATES for t in TEMPLATES]
    return normal, anomalous


def sliding_windows(grid: int, size: int, stride: int = 1) -> np.ndarray:
    """(W, size*size) patch indices of every size x size window on a grid x grid patch map, row-major."""
    starts = range(0, grid - size + 1, stride)
    windows = [
        [(row + dy) * grid + (col + dx) for dy in range(size) for dx in range(size)] for row in starts for col in starts
    ]
    return np.array(windows, dtype=np.int64).reshape(-1, size * size)


def harmonic_aggregation(window_scores: np.ndarray, windows: np.ndarray, patches: int) -> np.ndarray:
    """(patches,) map: each patch gets the harmonic mean of the scores of the windows covering it."""
    inverse_sum = np.zeros(patches, np.float64)
    count = np.zeros(patches, np.float64)
    for score, window in zip(np.asarray(window_scores, np.float64), windows):
        inverse_sum[window] += 1.0 / max(score, 1e-12)
        count[window] += 1
    covered = count > 0
    result = np.zeros(patches, np.float64)
    result[covered] = count[covered] / inverse_sum[covered]
    return result


@dataclass
class WinClip:
    """WinCLIP on a frozen CLIP; `scales` are window sizes in patches (the paper: 2 and 3 on ViT-B/16+ at 240)."""

    backbone: ClipBackbone
    class_name: str = "object"
    scales: Sequence[int] = (2, 3)
    name: str = "winclip"
    text: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.set_class(self.class_name)

    @torch.inference_mode()
    def set_class(self, class_name: str) -> None:
        """Embed the prompt ensemble once for this class: (2, E) normal and anomalous text embeddings."""
        self.class_name = class_name
        normal, anomalous = prompt_ensemble(class_name)
        self.text = torch.stack([F.normalize(self.backbone.encode_text(s).mean(0), dim=-1) for s in (normal, anomalous)])

    def anomaly_probability(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N,) softmax probability of the anomalous prompt for (N, E) image embeddings."""
        logits = self.backbone.logit_scale() * F.normalize(embeddings.float(), dim=-1) @ self.text.T
        return logits.softmax(dim=-1)[:, 1]

    @torch.inference_mode()
    def score(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(grid, grid) patch-level map and the class-token score of one image."""
        tokens = self.backbone.tokens(self.backbone.preprocess([image]))[0]
        grid = self.backbone.grid
        cls_embedding, _ = self.backbone.encode_tokens(tokens[None])
        image_score = float(self.anomaly_probability(cls_embedding)[0])
        maps = []
        for size in self.scales:
            windows = sliding_windows(grid, min(size, grid))
            scores = []
            for start in range(0, len(windows), WINDOW_BATCH):
                chunk = torch.as_tensor(windows[start:start + WINDOW_BATCH], device=tokens.device)
                window_tokens = torch.cat([tokens[0].expand(len(chunk), 1, -1), tokens[1:][chunk]], dim=1)
                embedding, _ = self.backbone.encode_tokens(window_tokens)
                scores.append(self.anomaly_probability(embedding).cpu().numpy())
            maps.append(harmonic_aggregation(np.concatenate(scores), windows, grid * grid))
        return np.mean(maps, axis=0).reshape(grid, grid).astype(np.float32), image_score

    def segment(self, image: np.ndarray) -> Result:
        """Full-resolution map (bilinear upsampling of the patch map) and image score = mean of class score and map max."""
        start = time.perf_counter()
        patch_map, class_score = self.score(image)
        scored = time.perf_counter()
        height, width = image.shape[:2]
        upsampled = F.interpolate(torch.from_numpy(patch_map)[None, None], size=(height, width), mode="bilinear", align_corners=False)
        heat = upsampled[0, 0].clamp(0, 1).numpy().astype(np.float32)
        timings = {"window_scoring": scored - start, "upsampling": time.perf_counter() - scored}
        return Result(heat, Boxes.empty(), Masks.empty(height, width), (self.class_name,), timings, self.name,
                      0.5 * (class_score + float(heat.max())))

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        self.set_class(category.replace("_", " "))
