"""GenCLIP's text side: the prompt layout with its learnable slots, and class-name filtering (CNF).

No public code exists; every rule cites the paper (Kim et al., "GenCLIP: Generalizing CLIP Prompts for
Zero-shot Anomaly Detection", 2025), seed file 002 of this project.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ...errors import WeightsError

# §4.1: "A photo of a good [cls] object." / "A photo of a damaged [cls] object."
STATES = ("good", "damaged")
# §3.5 query-only branch and §3.4 CNF: the universal / generic class word
GENERIC_WORD = "object"
# §3.4, Fig. 3(a): the two sentences CNF compares with the image, as the paper writes them
CNF_CLASS_SENTENCE = "A photo of a {}"
CNF_GENERIC_SENTENCE = "A photo of an object"
PLACEHOLDER = "x"  # any one-token word: its slots are overwritten by learned tokens


@dataclass(frozen=True)
class PromptLayout:
    """Token ids of one prompt and where its learned tokens go.

    §3.2: T = [N_P | A_P] [photo] [of] [a] [state] [cls] [Q_P] ...; §4.1 gives the words ("A photo of a
    good [cls] object."), so N_P / A_P stand where "A" stands, right after the start token, and the query
    tokens follow [cls], before "object.". The template holds no other slot: the text-layer prompt-tuning
    tokens (§3.2, B.4) replace positions 1 .. K before each later text layer (`GenClip.text_embeddings`).
    """

    ids: tuple[int, ...]
    state_position: int
    query_position: int
    eos_position: int


def readable_class_name(name: str) -> str:
    """A dataset folder name as words: "metal_nut" -> "metal nut" (our choice: CLIP reads "_" as its own token)."""
    return " ".join(re.sub(r"[_\-]+", " ", name).split()) or GENERIC_WORD


def strip_numbers(name: str) -> str:
    """CNF's first step (§3.4): numerical notations removed, "pcb2" -> "pcb", "02" -> ""."""
    return " ".join(re.sub(r"\d+", " ", name).split())


def prompt_layout(tokenizer, state: str, class_word: str, query_length: int, max_length: int) -> PromptLayout:
    """The ids of [SOS] [N_P|A_P] photo of a <state> <cls> [Q_P x query_length] object. [EOS] (§3.2, §4.1)."""
    def words(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    slot = words(PLACEHOLDER)[:1]
    body = words(f"photo of a {state} {class_word}")
    ids = [tokenizer.bos_token_id] + slot + body + slot * query_length + words(f"{GENERIC_WORD}.") + [tokenizer.eos_token_id]
    if len(ids) > max_length:
        raise WeightsError(f"the GenCLIP prompt for class {class_word!r} has {len(ids)} tokens; the CLIP text encoder takes {max_length}")
    return PromptLayout(tuple(ids), 1, 2 + len(body), len(ids) - 1)


def filter_class_name(name: str, image_embedding: torch.Tensor, encode_text: Callable[[Sequence[str]], torch.Tensor],
                      generic: str = GENERIC_WORD) -> str:
    """Class-name filtering (§3.4, Fig. 3(a)): the class word the vision-enhanced branch uses for this image.

    Numbers are removed first; then the frozen CLIP compares the image with "A photo of a [cls]" and
    with "A photo of an object", and the class name is replaced by the generic word when the image is
    closer to the generic sentence. `encode_text` returns unit text embeddings; `image_embedding` is the
    frozen CLIP's (E,) image embedding. Ties keep the class name (the paper replaces on "higher" only).
    """
    word = strip_numbers(readable_class_name(name))
    if not word or word == generic:
        return generic
    text = encode_text([CNF_CLASS_SENTENCE.format(word), CNF_GENERIC_SENTENCE])
    similarity = text.float() @ torch.nn.functional.normalize(image_embedding.float(), dim=-1)
    return generic if float(similarity[1]) > float(similarity[0]) else word
