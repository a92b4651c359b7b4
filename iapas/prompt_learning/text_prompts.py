"""Learnable text prompts: sentences with slots for learned tokens, and deep prompts in the first text layers.

AnomalyCLIP's object-agnostic prompts ("[learned] object." / "[learned] damaged object.") and
FAPrompt's compound prompts are both a frozen sentence whose first tokens after the start token are
learned, run through CLIP's text encoder with further learned tokens replacing positions 1..K in the
next layers (deep text prompt tuning).
"""
from __future__ import annotations

from typing import Sequence

import torch

DEEP_PROMPT_INIT_STD = 0.02  # zqhang/AnomalyCLIP prompt_ensemble.py: nn.init.normal_(std=0.02) for every learned token


def learned_tokens(*shape: int) -> torch.nn.Parameter:
    """A learnable token tensor initialised as the references do (normal, std 0.02)."""
    return torch.nn.Parameter(DEEP_PROMPT_INIT_STD * torch.randn(*shape))


def deep_prompts(depth: int, length: int, width: int) -> torch.nn.ParameterList:
    """Learned tokens for text layers 2 .. depth: `depth - 1` tensors (length, width).

    zqhang/AnomalyCLIP prompt_ensemble.py `compound_prompts_text`: depth 9 and length 4 by default; the
    first layer's learned tokens are the sentence's own slots.
    """
    return torch.nn.ParameterList([learned_tokens(length, width) for _ in range(max(0, depth - 1))])


def slot_sentences(backbone, sentences: Sequence[tuple[int, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word embeddings (N, L, D) and end-token positions (N,) of sentences "<start> [slots] words <end>".

    The slot tokens' embeddings are placeholders, overwritten by `fill_slots`; shorter sentences are
    padded after their end token, which the causal mask keeps from mattering.
    """
    tokenizer = backbone.tokenizer
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = [[start] * (1 + slots) + tokenizer(words, add_special_tokens=False)["input_ids"] + [end] for slots, words in sentences]
    length = max(len(row) for row in rows)
    ids = torch.tensor([row + [end] * (length - len(row)) for row in rows], device=backbone.device)
    eos = torch.tensor([len(row) - 1 for row in rows], device=backbone.device)
    with torch.no_grad():
        embeddings = backbone.clip.text_model.embeddings.token_embedding(ids)
    return embeddings, eos


def fill_slots(embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The sentences (N, L, D) with positions 1..S replaced by learned tokens (N, S, D)."""
    count = tokens.shape[1]
    return torch.cat([embeddings[:, :1], tokens.to(embeddings.dtype), embeddings[:, 1 + count:]], dim=1)


def encode_prompted(backbone, embeddings: torch.Tensor, eos: torch.Tensor, deep: torch.nn.ParameterList,
                    normalize: bool = True, half_deep: bool = False) -> torch.Tensor:
    """(N, E) text embeddings of filled sentences, the deep prompts replacing positions 1..K in layers 2 .. len(deep)+1.

    `half_deep` rounds the deep prompts to fp16 first, as zqhang/AnomalyCLIP AnomalyCLIP_lib/AnomalyCLIP.py
    ResidualAttentionBlock_learnable_token does (`.half()`, then joined to the fp32 tokens).
    """
    stacked = torch.stack(list(deep))[None].expand(len(embeddings), -1, -1, -1) if len(deep) else None
    if stacked is not None and half_deep:
        stacked = stacked.half().float()
    return backbone.encode_text_embeddings(embeddings, eos, stacked, prompt_start=1, normalize=normalize)
