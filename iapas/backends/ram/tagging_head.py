"""RAM's image-tag recognition decoder: a Query2Label-style BERT stack of cross-attention layers.

Written for iapas after recognize-anything's `ram/models/ram.py` (RAM.__init__, del_selfattention,
generate_tag) and `ram/models/bert.py` (BertLayer in mode 'tagging', BertAttention, BertSelfOutput,
BertIntermediate, BertOutput). RAM builds a BertModel from `ram/configs/q2l_config.json` and then deletes
its embeddings and every self-attention, so each layer is: the label queries attend to the image tokens,
then a feed-forward, each followed by a residual LayerNorm. The module names are the released
checkpoints' names under `tagging_head.` (`encoder.layer.N.crossattention.self.query`, ...), so the state
dict loads as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadShape:
    """The sizes of the tagging head (ram/configs/q2l_config.json, encoder_width set to 512 in ram.py)."""

    layers: int = 2
    hidden: int = 768
    heads: int = 4
    intermediate: int = 3072
    image_width: int = 512  # ram.py: q2l_config.encoder_width = 512, the width of image_proj's output
    layer_norm_eps: float = 1e-12


class QueryKeyValue(nn.Module):
    """Queries from the labels, keys and values from the image tokens (bert.py BertSelfAttention, is_cross_attention)."""

    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.heads = shape.heads
        self.query = nn.Linear(shape.hidden, shape.hidden)
        self.key = nn.Linear(shape.image_width, shape.hidden)
        self.value = nn.Linear(shape.image_width, shape.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(labels)), self._split(self.key(image)), self._split(self.value(image))
        # bert.py BertSelfAttention: scores divided by sqrt(head size) after the product; RAM's image mask is all
        # ones, so the additive mask bert.py adds is zero and is left out here
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        out = scores.softmax(dim=-1) @ v
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)


class AddNorm(nn.Module):
    """dense, then LayerNorm of (that + residual) (bert.py BertSelfOutput and BertOutput)."""

    def __init__(self, width_in: int, width_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width_out)
        self.LayerNorm = nn.LayerNorm(width_out, eps=eps)  # the checkpoint's name

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class CrossAttention(nn.Module):
    """bert.py BertAttention used as cross-attention: attention, then AddNorm with the queries."""

    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.self = QueryKeyValue(shape)  # the checkpoint's name ("crossattention.self.query")
        self.output = AddNorm(shape.hidden, shape.hidden, shape.layer_norm_eps)

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(labels, image), labels)


class Intermediate(nn.Module):
    """bert.py BertIntermediate: dense then GELU (q2l_config hidden_act "gelu", the exact erf form)."""

    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.dense = nn.Linear(shape.hidden, shape.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class TaggingLayer(nn.Module):
    """bert.py BertLayer in mode 'tagging': cross-attention, then the feed-forward (no self-attention)."""

    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.crossattention = CrossAttention(shape)
        self.intermediate = Intermediate(shape)
        self.output = AddNorm(shape.intermediate, shape.hidden, shape.layer_norm_eps)

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        attended = self.crossattention(labels, image)
        return self.output(self.intermediate(attended), attended)


class LayerStack(nn.Module):
    """The layers, under the name bert.py's BertEncoder gives them (`encoder.layer.N`)."""

    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TaggingLayer(shape) for _ in range(shape.layers))


class TaggingHead(nn.Module):
    """(B, classes, hidden) label queries and (B, tokens, image_width) image tokens -> (B, classes, hidden)."""

    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.shape = shape
        self.encoder = LayerStack(shape)

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # ram.py generate_tag passes the label embeddings as `encoder_embeds`: bert.py BertModel.forward then
        # skips the (deleted) embedding layer, so the queries enter the first layer as they are
        for layer in self.encoder.layer:
            labels = layer(labels, image)
        return labels
