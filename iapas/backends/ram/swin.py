"""RAM's image encoder: the original (v1) Swin Transformer, with its parameter names.

Written for iapas after recognize-anything's `ram/models/swin_transformer.py` (itself Microsoft's Swin
Transformer); every rule below names the class it follows there. The parameter names are the ones the
released RAM checkpoints use under `visual_encoder.`, so a state dict loads without renaming. The two
index buffers (relative position index, shifted-window mask) are computed here and not saved: RAM's loader
deletes them from the checkpoint too (`ram/models/utils.py` load_checkpoint_swinlarge).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SHIFTED_WINDOW_MASK = -100.0  # swin_transformer.py SwinTransformerBlock: other sub-windows get -100, not -inf


@dataclass(frozen=True)
class SwinShape:
    """The sizes of one Swin encoder (RAM's `configs/swin/config_swinL_384.json` is the default)."""

    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0

    @property
    def width(self) -> int:
        """Channels of the last stage (RAM's `vision_width`): the embedding doubles at every patch merging."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window * window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def from_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """The inverse of `to_windows`: (B * windows, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) row of the bias table for each pair of positions in a window.

    swin_transformer.py WindowAttention: the offsets (dy, dx), each in [-(w-1), w-1], index a
    (2w-1) x (2w-1) table in row-major order.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(windows, window², window²) additive mask: 0 within a region, -100 across the regions the roll joined.

    swin_transformer.py SwinTransformerBlock: after rolling by -shift, each axis has three regions,
    [0, size - window), [size - window, size - shift) and [size - shift, size); two positions of one window
    may attend to each other only when they lie in the same region on both axes.
    """
    def regions(size: int) -> torch.Tensor:
        position = torch.arange(size)
        return (position >= size - window).long() + (position >= size - shift).long()

    label = regions(height)[:, None] * 3 + regions(width)[None, :]
    windows = to_windows(label[None, :, :, None].float(), window).squeeze(-1)  # (windows, window²)
    different = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(different.shape).masked_fill(different, SHIFTED_WINDOW_MASK)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learnt relative position bias per head."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5  # swin_transformer.py WindowAttention: qk_scale None -> head_dim^-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B * windows, N, C) -> same; `mask` is (windows, N, N) or None."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # swin_transformer.py: q is scaled before the product
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()].view(n, n, -1)
        scores = scores + bias.permute(2, 0, 1)
        if mask is not None:
            windows = mask.shape[0]
            scores = (scores.view(b // windows, windows, self.heads, n, n) + mask[None, :, None]).view(b, self.heads, n, n)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    """Two linear layers with an exact GELU between them (swin_transformer.py Mlp, act_layer nn.GELU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm window attention (shifted by `shift` when > 0) and MLP, each with a residual."""

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if min(resolution) <= window:  # swin_transformer.py SwinTransformerBlock: one window covers the map, no shift
            window, shift = min(resolution), 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", self._mask(), persistent=False)

    def _mask(self) -> torch.Tensor | None:
        return shifted_window_mask(*self.resolution, self.window, self.shift) if self.shift > 0 else None

    def rebuild_buffers(self) -> None:
        """Compute the index buffers again (after a model built on the meta device got its weights)."""
        self.attn_mask = self._mask()
        self.attn.relative_position_index = relative_position_index(self.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = from_windows(self.attn(to_windows(y, self.window), self.attn_mask), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated, normalised and projected to twice the channels (swin_transformer.py PatchMerging)."""

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        # swin_transformer.py PatchMerging: the order (top-left, bottom-left, top-right, bottom-right) is the
        # order of the reduction's input channels
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """The blocks of one resolution (every second one shifted by half a window), then patch merging."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int, window: int, mlp_ratio: float,
                 merge: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(dim, resolution) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """Non-overlapping patches through a strided convolution, then LayerNorm (RAM builds it with patch_norm=True)."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pixels).flatten(2).transpose(1, 2))


class SwinEncoder(nn.Module):
    """(B, 3, S, S) pixels -> (B, 1 + tokens, width): the mean token first, then the last stage's tokens.

    swin_transformer.py SwinTransformer.forward: after the final LayerNorm, the tokens' average is put in
    front of them (RAM uses it as the image's [CLS] embedding); no absolute position embedding (ape=False).
    """

    def __init__(self, shape: SwinShape) -> None:
        super().__init__()
        self.shape = shape
        grid = shape.image_size // shape.patch_size
        self.patch_embed = PatchEmbed(shape.patch_size, shape.embed_dim)
        last = len(shape.depths) - 1
        self.layers = nn.ModuleList(
            SwinStage(shape.embed_dim * 2**i, (grid // 2**i, grid // 2**i), depth, heads, shape.window_size,
                      shape.mlp_ratio, merge=i < last)
            for i, (depth, heads) in enumerate(zip(shape.depths, shape.num_heads))
        )
        self.norm = nn.LayerNorm(shape.width)

    def rebuild_buffers(self) -> None:
        """Compute every block's index buffers again (they are not in the checkpoint)."""
        for module in self.modules():
            if isinstance(module, SwinBlock):
                module.rebuild_buffers()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        for stage in self.layers:
            x = stage(x)
        x = self.norm(x)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
