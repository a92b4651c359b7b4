"""Step 1-3: the LLM turns IAP (+) T_n into defect clauses P_adj; P_final joins them with the fixed prompts and tags."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..backends.llm import LLM
from ..config import GROUNDING_DINO_MAX_TEXT_TOKENS
from ..methods.iapas.prompting import Template, final_prompts, parse_defect_words


@dataclass
class LlmPromptStage:
    """Asks the LLM once per calibration (answers are cached) and parses its answer."""

    llm: LLM
    template: Template
    name: str = "llm"
    inputs: tuple[str, ...] = ("tags",)
    outputs: tuple[str, ...] = ("llm_answer", "p_adj")

    def run(self, tags: tuple[str, ...]) -> dict[str, object]:
        answer = self.llm.generate(self.template.render(tags), tags)
        return {"llm_answer": answer, "p_adj": parse_defect_words(answer, object_names=tags)}


@dataclass
class FinalPromptStage:
    """P_final = fixed + P_adj + tags, deduplicated, within the detector's text length."""

    count_tokens: Callable[[str], int] | None = None
    max_tokens: int = GROUNDING_DINO_MAX_TEXT_TOKENS
    name: str = "final_prompts"
    inputs: tuple[str, ...] = ("p_adj", "tags")
    outputs: tuple[str, ...] = ("prompts",)

    def run(self, p_adj: tuple[str, ...], tags: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        return {"prompts": final_prompts(p_adj, tags, self.count_tokens, self.max_tokens)}
