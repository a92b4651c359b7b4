"""The vision side of AnomalyCLIP and the methods built on it: input size, interpolated positions, V-V attention.

AnomalyCLIP (and FAPrompt, GenCLIP after it) feed 518 px images to a CLIP trained at 336 px, so the
position embeddings are interpolated, and from layer 6 on a second, value-value ("V-V", the
reference's DPAM) attention path runs beside the frozen transformer: its patch tokens keep local
detail that query-key attention washes out, while the class token still comes from the untouched path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE_CLIP_SIZE = 336  # ViT-L/14-336, the backbone AnomalyCLIP and FAPrompt use
REFERENCE_INPUT_SIZE = 518  # AnomalyCLIP train.py/test.py --image_size 518; FAPrompt paper App. B
REFERENCE_DEPTH = 24
VV_FROM_LAYER = 6  # zqhang/AnomalyCLIP train.py: DAPM_replace(DPAM_layer=20) swaps resblocks[-1..-19] of 24: layers 6..24
SIMILARITY_TEMPERATURE = 0.07  # zqhang/AnomalyCLIP AnomalyCLIP_lib/model_load.py compute_similarity: logits / 0.07


def input_size_for(image_size: int, patch_size: int) -> int:
    """518 px for ViT-L/14-336 (a 37 x 37 grid); other CLIPs get the same ratio of grid to their own, in whole patches."""
    grid = max(1, round(image_size / patch_size * REFERENCE_INPUT_SIZE / REFERENCE_CLIP_SIZE))
    return grid * patch_size


def vv_start_for(depth: int) -> int:
    """Layer 6 of 24, as in the reference; a shallower CLIP starts at the same fraction of its depth (at least layer 1)."""
    return max(1, round(depth * VV_FROM_LAYER / REFERENCE_DEPTH))


def evenly_spaced_layers(depth: int) -> tuple[int, ...]:
    """Four evenly spaced layers ending at the last: 6, 12, 18, 24 for a 24-layer ViT-L/14."""
    return tuple(sorted({max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)}))


def reference_pixels(backbone, images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(B, 3, size, size) normalised pixels, resized as AnomalyCLIP and FAPrompt do: the whole image, bicubic, antialiased.

    zqhang/AnomalyCLIP utils.py get_transform: torchvision Resize((518, 518), BICUBIC) on the PIL image
    (PIL filters when it shrinks), a centre crop that crops nothing, then CLIP's mean and std.
    """
    batch = torch.cat([F.interpolate(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().to(backbone.device) / 255,
                                     size=(size, size), mode="bicubic", align_corners=False, antialias=True)
                       for image in images])  # one image at a time: images of any sizes
    return (batch.clamp(0, 1) - backbone.mean) / backbone.std


def pil_pixels(backbone, images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(B, 3, size, size) normalised pixels from PIL's bicubic resize of the uint8 image, as the references' loaders run.

    caoyunkang/AdaCLIP method/trainer.py and zqhang/AnomalyCLIP utils.py get_transform (FAPrompt's copy too):
    torchvision Resize((size, size), BICUBIC) on the PIL image, which is PIL's own resize (antialiased, rounded
    to whole grey levels), then ToTensor and CLIP's mean and std. It differs from `reference_pixels` (float
    resize, not rounded) by about one grey level.
    """
    from PIL import Image

    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BICUBIC), np.float32)
               for image in images]
    batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(backbone.device) / 255
    return (batch - backbone.mean) / backbone.std


# how a CLIP method may resize its input: "antialiased" (every method's default) or "pil" (an official recipe's)
PIXEL_RESIZES = {"antialiased": reference_pixels, "pil": pil_pixels}


def tokens_at(backbone, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 1 + g*g, D) class and patch tokens for pixels of any size, position embeddings interpolated to the grid.

    zqhang/AnomalyCLIP AnomalyCLIP_lib/AnomalyCLIP.py VisionTransformer.forward: the patch positions are
    resized bilinearly (align_corners False) when the grid differs from the one CLIP was trained on.
    """
    embeddings = backbone.clip.vision_model.embeddings
    patches = embeddings.patch_embedding(pixels.to(embeddings.patch_embedding.weight.dtype))
    grid = patches.shape[-1]
    patches = patches.flatten(2).transpose(1, 2)
    position = embeddings.position_embedding.weight
    trained = round((position.shape[0] - 1) ** 0.5)  # the grid the table was trained for, not the current input size
    if grid != trained:
        square = position[1:].reshape(1, trained, trained, -1).permute(0, 3, 1, 2)
        square = F.interpolate(square, size=(grid, grid), mode="bilinear", align_corners=False)
        position = torch.cat([position[:1], square.permute(0, 2, 3, 1).reshape(grid * grid, -1)])
    cls = embeddings.class_embedding.expand(len(pixels), 1, -1)
    return torch.cat([cls, patches], dim=1) + position[None]


def vv_attention(attention: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Value-value self-attention of (B, N, C) normalised tokens through a CLIP attention block's own weights.

    zqhang/AnomalyCLIP AnomalyCLIP_lib/AnomalyCLIP.py `Attention.forward`: queries and keys are both
    replaced by the values, per head softmax(v v^T * head_dim^-0.5) v, then the block's output projection.
    """
    batch, count, width = hidden.shape
    heads = attention.num_heads
    values = attention.v_proj(hidden).view(batch, count, heads, width // heads).transpose(1, 2)
    weights = (values @ values.transpose(-2, -1) * attention.scale).softmax(dim=-1)
    mixed = (weights @ values).transpose(1, 2).reshape(batch, count, width)
    return attention.out_proj(mixed)


def encode_dual_path(backbone, tokens: torch.Tensor, vv_from: int, layers: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the frozen ViT with a V-V path from layer `vv_from` on; the last hidden state and the tokens after `layers`.

    The returned (B, N, D) hidden state is the unchanged CLIP's (for the class token). The tokens after
    a layer at or past `vv_from` are the V-V path's, before it the ordinary ones. The V-V path
    (zqhang/AnomalyCLIP AnomalyCLIP_lib/AnomalyCLIP.py ResidualAttentionBlock.forward, ffn False) starts
    from the input of layer `vv_from`, adds the V-V attention of every later layer computed on the
    ordinary path's normalised tokens, and skips the MLP.
    """
    hidden = backbone.clip.vision_model.pre_layrnorm(tokens)
    vv = None
    collected = []
    for index, layer in enumerate(backbone.clip.vision_model.encoder.layers, start=1):
        if index >= vv_from:
            vv = (hidden if vv is None else vv) + vv_attention(layer.self_attn, layer.layer_norm1(hidden))
        output = layer(hidden, None)
        hidden = output[0] if isinstance(output, tuple) else output
        if index in layers:
            collected.append(hidden if vv is None else vv)
    return hidden, collected


def two_class_probabilities(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) softmax over [normal, abnormal] of unit features (B, N, E) against unit text (2, E) or per image (B, 2, E).

    zqhang/AnomalyCLIP AnomalyCLIP_lib/model_load.py compute_similarity: cosine / 0.07, softmax over the two texts.
    """
    text = text.to(features.dtype)
    logits = features @ (text.transpose(-2, -1) if text.dim() == 3 else text.t())
    return (logits / SIMILARITY_TEMPERATURE).softmax(dim=-1)


def upsample_patches(probabilities: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 2, size, size) maps from (B, g*g, 2) patch probabilities, bilinear (get_similarity_map, align_corners False)."""
    batch, count, classes = probabilities.shape
    grid = int(round(count ** 0.5))
    square = probabilities.transpose(1, 2).reshape(batch, classes, grid, grid).float()
    return F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)


class ReferenceInput:
    """For models that read images as AnomalyCLIP's code does: `settings.image_size` px, `reference_pixels` resizing.

    The training loop and inference ask a learner for `input_size` and `preprocess`; AnomalyCLIP and FAPrompt
    (built on it) answer the same way, and their `rules.input_resize` picks the float or the uint8 PIL resize.
    """

    backbone: object
    settings: object

    @property
    def input_size(self) -> int:
        return self.settings.image_size

    @property
    def mask_rule(self) -> str:
        """How the training loop resizes masks (`training.resized_mask`): the rules' nearest or bilinear."""
        rules = getattr(self, "rules", None)
        return rules.train_masks if rules is not None else "nearest"

    @property
    def train_precision(self) -> str:
        """The training loop's precision (`training.mixed_precision`): auto (bf16 on a GPU) or fp32."""
        rules = getattr(self, "rules", None)
        return rules.train_precision if rules is not None else "auto"

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Pixels at the input size, resized as the reference's PIL bicubic resize does (antialiased)."""
        rules = getattr(self, "rules", None)
        resize = pil_pixels if rules is not None and rules.input_resize == "pil-uint8" else reference_pixels
        return resize(self.backbone, images, self.settings.image_size)
