"""The Recognize Anything Model (RAM) and RAM++ for tagging: image -> one logit per tag of the tag list.

Written for iapas after recognize-anything's `ram/models/ram.py` (RAM.generate_tag) and
`ram/models/ram_plus.py` (RAM_plus.generate_tag). Only the tagging path is here: RAM's tag encoder and
caption decoder (`tag_encoder.*`, `text_decoder.*` in its checkpoint) take no part in tagging and are not
built. The parameter names are the checkpoints' own (`visual_encoder`, `image_proj`, `label_embed`,
`wordvec_proj`, `tagging_head`, `fc`, and RAM++'s `reweight_scale`).

Paper: "Recognize Anything: A Strong Image Tagging Model", https://arxiv.org/abs/2306.03514; RAM++:
"Open-Set Image Tagging with Multi-Grained Text Supervision", https://arxiv.org/abs/2310.15200.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .swin import SwinEncoder, SwinShape
from .tagging_head import HeadShape, TaggingHead

LABEL_WIDTH = 512  # ram.py: label embeddings and projected image tokens are 512 wide (CLIP text width)
TAG_COUNT = 4585  # ram/data/ram_tag_list.txt
RAM_PLUS_DESCRIPTIONS = 51  # ram_plus.py: label_embed holds 51 description embeddings per tag
IMAGE_MEAN = (0.485, 0.456, 0.406)  # ram/transform.py get_transform: ImageNet normalisation
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RamShape:
    """Every size of a RAM model; the defaults are the released Swin-L 384 px models'."""

    swin: SwinShape = field(default_factory=SwinShape)
    head: HeadShape = field(default_factory=HeadShape)
    classes: int = TAG_COUNT
    descriptions: int = 1  # label embeddings per class: 1 for RAM, 51 for RAM++

    @property
    def plus(self) -> bool:
        """RAM++: several description embeddings per class, mixed per image (ram_plus.py generate_tag)."""
        return self.descriptions > 1


class RamModel(nn.Module):
    """(B, 3, S, S) normalised pixels -> (B, classes) tag logits."""

    def __init__(self, shape: RamShape) -> None:
        super().__init__()
        self.shape = shape
        self.visual_encoder = SwinEncoder(shape.swin)
        self.image_proj = nn.Linear(shape.swin.width, LABEL_WIDTH)
        self.label_embed = nn.Parameter(torch.zeros(shape.classes * shape.descriptions, LABEL_WIDTH))
        # ram.py: a projection only when the head is not 512 wide (q2l_config's 768 is not)
        self.wordvec_proj = nn.Linear(LABEL_WIDTH, shape.head.hidden) if shape.head.hidden != LABEL_WIDTH else nn.Identity()
        self.tagging_head = TaggingHead(shape.head)
        self.fc = nn.Linear(shape.head.hidden, 1)
        if shape.plus:
            self.reweight_scale = nn.Parameter(torch.zeros(()))  # ram_plus.py: a log scale, exp() at use

    def rebuild_buffers(self) -> None:
        """Compute the image encoder's index buffers (a model built on the meta device has none)."""
        self.visual_encoder.rebuild_buffers()

    def label_queries(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, classes, hidden) queries: relu(wordvec_proj(label embedding)).

        RAM (ram.py generate_tag) uses one embedding per class. RAM++ (ram_plus.py generate_tag) mixes each
        class's descriptions by a softmax over their scaled dot products with the unit-normalised mean image
        token (exp(reweight_scale) x cos), per image, before the same projection.
        """
        batch = image_tokens.shape[0]
        if not self.shape.plus:
            return torch.relu(self.wordvec_proj(self.label_embed)).unsqueeze(0).expand(batch, -1, -1)
        image = image_tokens[:, 0]
        image = image / image.norm(dim=-1, keepdim=True)
        descriptions = self.label_embed.view(self.shape.classes, self.shape.descriptions, LABEL_WIDTH)
        weights = (self.reweight_scale.exp() * image @ self.label_embed.t()).view(batch, self.shape.classes, -1)
        mixed = torch.einsum("bcd,cde->bce", weights.softmax(dim=-1), descriptions)
        return torch.relu(self.wordvec_proj(mixed))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        image_tokens = self.image_proj(self.visual_encoder(pixels))  # (B, 1 + tokens, 512); token 0 is the mean
        queries = self.label_queries(image_tokens)
        return self.fc(self.tagging_head(queries, image_tokens)).squeeze(-1)
