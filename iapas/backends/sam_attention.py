"""SAM ViT attention through torch's fused scaled_dot_product_attention, with the reference kept for the naive loop.

segment_anything's image encoder (segment_anything/modeling/image_encoder.py `Attention.forward` and
`add_decomposed_rel_pos`) writes the full (B x heads, N, N) score matrix, adds the decomposed relative
position terms in a second full-size pass, soft-maxes it in a third, then multiplies by V. In the four
global blocks of ViT-B at 1024 px N is 4096, so each of those passes moves 805 MB of float32: on a CPU the
encoder spends much of its time moving memory rather than multiplying.

`fused_attention` computes the same function: the relative position terms (a function of the unscaled
queries, as the reference computes them, by the reference's own `get_rel_pos`) become one additive
attention mask, written once, and `F.scaled_dot_product_attention` does scores, mask, softmax and V in one
fused kernel. The arithmetic order differs (q.k then x scale inside the kernel, against (q x scale).k), so
embeddings agree to float rounding (tests/test_sam_attention.py states the bound) and masks up to the
borderline pixels `iapas/acceleration/mask_upsampling.py` already allows.

`install_fused_attention` puts it on every attention block of a loaded SAM encoder (instance attributes,
the class untouched); `reference_attention` takes it off for a block of code, which is how `iapas bench
--vs-naive` runs the official code's encoder on the same model object.
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F


def relative_position_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                           height: int, width: int) -> torch.Tensor:
    """(B, N, N) additive scores of the decomposed relative positions for queries q (B, N, C), N = height x width."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    batch, _, channels = q.shape
    grid = q.reshape(batch, height, width, channels)
    along_h = torch.einsum("bhwc,hkc->bhwk", grid, get_rel_pos(height, height, rel_pos_h))
    along_w = torch.einsum("bhwc,wkc->bhwk", grid, get_rel_pos(width, width, rel_pos_w))
    bias = along_h[:, :, :, :, None] + along_w[:, :, :, None, :]  # (B, qh, qw, kh, kw) in one pass
    return bias.reshape(batch, height * width, height * width)


def fused_attention(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment_anything `Attention.forward`'s function, on torch's fused attention kernel (bound to one block)."""
    batch, height, width, _ = x.shape
    tokens = height * width
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, N, C)
    mask = None
    if self.use_rel_pos:
        flat_q = q.reshape(batch * self.num_heads, tokens, -1)
        mask = relative_position_bias(flat_q, self.rel_pos_h, self.rel_pos_w, height, width)
        mask = mask.reshape(batch, self.num_heads, tokens, tokens).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
    out = out.transpose(1, 2).reshape(batch, height, width, -1)
    return self.proj(out)


def attention_blocks(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The segment_anything attention modules of an image encoder."""
    from segment_anything.modeling.image_encoder import Attention

    return [module for module in encoder.modules() if isinstance(module, Attention)]


def install_fused_attention(encoder: torch.nn.Module) -> int:
    """Give every attention block of `encoder` the fused forward; returns how many blocks got it."""
    blocks = attention_blocks(encoder)
    for block in blocks:
        block.forward = types.MethodType(fused_attention, block)
    return len(blocks)


@contextmanager
def reference_attention(encoder: torch.nn.Module) -> Iterator[None]:
    """Within the block, the encoder runs segment_anything's own attention (the fused forward comes back after)."""
    fused = [block for block in attention_blocks(encoder) if "forward" in vars(block)]
    for block in fused:
        del block.forward
    try:
        yield
    finally:
        for block in fused:
            block.forward = types.MethodType(fused_attention, block)
