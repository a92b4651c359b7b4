"""DINOv2 (transformers `Dinov2Model`, a local directory) as a frozen patch-feature extractor.

One backbone for every method that reads DINOv2 features (MuSc's DINOv2 variants, AnomalyDINO, HEPE):
each method keeps its own resizing and normalisation and asks this module for hidden states, normed the
way the official `get_intermediate_layers(..., norm=True)` returns them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import load_error, quiet_loading, require_path, warn_if_demo
from ..errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's normalisation (facebookresearch/dinov2 data/transforms.py)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dinov2Backbone(torch.nn.Module):
    """A frozen Dinov2Model: pixels in, the final-normed hidden states of chosen blocks out."""

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        super().__init__()
        from transformers import Dinov2Model

        path = Path(path)
        require_path(path, "DINOv2", expect_dir=True)
        warn_if_demo(path)
        try:
            with quiet_loading():
                self.model = Dinov2Model.from_pretrained(path, local_files_only=True)
        except Exception as error:  # safetensors, torch and transformers each raise their own types for a bad file
            raise load_error("DINOv2", path, error) from None
        self.model.requires_grad_(False).eval()
        self.name = path.name
        config = self.model.config
        self.patch_size = int(config.patch_size)
        self.depth = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def require_layers(self, layers: Sequence[int]) -> None:
        """Raise a one-line WeightsError naming the first 1-based block among `layers` this DINOv2 lacks."""
        bad = [layer for layer in layers if not 1 <= layer <= self.depth]
        if bad:
            raise WeightsError(f"ViT layer {bad[0]} does not exist: DINOv2 {self.name!r} has {self.depth} layers")

    def check_size(self, height: int, width: int) -> None:
        """Refuse (one line) an input side that is not a multiple of the patch size."""
        if height % self.patch_size or width % self.patch_size:
            raise WeightsError(f"input size {height}x{width} is not a multiple of DINOv2's patch size {self.patch_size}")

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] normalised with ImageNet's mean and deviation."""
        return (pixels.to(self.device) - self.mean) / self.std

    def resized(self, images: Sequence[np.ndarray], size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
        """(B, 3, h, w) pixels in [0, 1], each uint8 RGB image resized as PIL resizes (antialiased), not normalised."""
        out = []
        for image in images:  # one at a time: a batch may hold images of any sizes
            pixels = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().to(self.device) / 255
            out.append(F.interpolate(pixels, size=size, mode=mode, align_corners=False, antialias=True).clamp(0, 1))
        return torch.cat(out)

    def normed_layers(self, pixels: torch.Tensor, layers: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Patch tokens (B, P, D) after each 1-based block in `layers`, each through the final LayerNorm, and the
        normed class token (B, D) of the last block.

        facebookresearch/dinov2 `get_intermediate_layers(x, n, norm=True)` applies the model's final norm to every
        block it returns, and its `forward` returns the normed class token (the head is an identity).
        """
        self.check_size(*pixels.shape[-2:])
        output = self.model(pixel_values=pixels, output_hidden_states=True)
        norm = self.model.layernorm
        patches = [norm(output.hidden_states[layer])[:, 1:] for layer in layers]  # hidden_states[0]: the embeddings
        return patches, output.last_hidden_state[:, 0]

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, P, D) normed patch tokens of the last block (what AnomalyDINO's `forward_features` gives as x_norm_patchtokens)."""
        self.check_size(*pixels.shape[-2:])
        return self.model(pixel_values=pixels).last_hidden_state[:, 1:]


def dinov2_for_config(chosen: str, config) -> Dinov2Backbone:
    """The DINOv2 the config names (`chosen`), else the first 'dinov2' manifest entry in its weights dir, on its device."""
    from ..device import resolve_device
    from ..weights.manifest import chosen_or_found

    return Dinov2Backbone(chosen_or_found("dinov2", chosen, config.weights_dir), resolve_device(config.device))
