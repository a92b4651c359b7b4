"""Step 1-3: the LLM turns IAP (+) T_n into defect clauses P_adj; P_final joins them with the fixed prompts and tags.

Two prompt styles (a recipe rule):
- `template` (iapas recipe): one rendered IAP template, the answer parsed by parse_defect_words.
- `official` (official recipe; utils/function.py process_anomaly_tags_2, called by test_zsas.py with the
  top-1 object tag): a system and a user message per object tag, sampled (temperature 0.6, top-p 0.9, 512
  new tokens) under a fixed seed, the answer cleaned by official_clean (clean_string).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..backends.llm import GREEDY, LLM, GenerationOptions
from ..config import GROUNDING_DINO_MAX_TEXT_TOKENS
from ..methods.iapas.prompting import OfficialMessages, Template, final_prompts, official_clean, parse_defect_words
from ..registry import Registry

# calibration.answer_cleaning: (answer, object tags, add "abnormal"/"defect") -> P_adj items
ANSWER_CLEANERS: Registry[Callable[[str, Sequence[str], bool], tuple[str, ...]]] = Registry("answer cleaning")
ANSWER_CLEANERS.register("parse")(lambda answer, tags, add_fixed: parse_defect_words(answer, object_names=tags))
# utils/function.py clean_string: appends "abnormal, defect" itself, so P_final needs no fixed prompts in front
ANSWER_CLEANERS.register("official")(lambda answer, tags, add_fixed: official_clean(answer, add_fixed))


@dataclass
class LlmPromptStage:
    """Asks the LLM once per calibration (answers are cached) and parses its answer."""

    llm: LLM
    template: Template
    options: GenerationOptions = GREEDY
    cleaning: str = "parse"
    add_fixed: bool = True
    name: str = "llm"
    inputs: tuple[str, ...] = ("tags",)
    outputs: tuple[str, ...] = ("llm_answer", "p_adj")

    def run(self, tags: tuple[str, ...]) -> dict[str, object]:
        answer = self.llm.generate(self.template.render(tags), tags, self.options)
        return {"llm_answer": answer, "p_adj": ANSWER_CLEANERS.get(self.cleaning)(answer, tags, self.add_fixed)}


@dataclass
class OfficialLlmStage:
    """The official messages per object tag, each answer cleaned as clean_string does."""

    llm: LLM
    messages: OfficialMessages
    options: GenerationOptions
    cleaning: str = "official"
    add_fixed: bool = True
    name: str = "llm"
    inputs: tuple[str, ...] = ("tags",)
    outputs: tuple[str, ...] = ("llm_answer", "p_adj")

    def run(self, tags: tuple[str, ...]) -> dict[str, object]:
        answers, nouns = [], []
        for tag in tags:
            answer = self.llm.generate(self.messages.render(tag), (tag,), self.options)
            answers.append(answer)
            nouns.extend(ANSWER_CLEANERS.get(self.cleaning)(answer, (tag,), self.add_fixed))
        return {"llm_answer": "\n".join(answers), "p_adj": tuple(dict.fromkeys(nouns))}


@dataclass
class FinalPromptStage:
    """P_final = fixed + P_adj + tags, deduplicated, within the detector's text length."""

    count_tokens: Callable[[str], int] | None = None
    max_tokens: int = GROUNDING_DINO_MAX_TEXT_TOKENS
    fixed: Sequence[str] = ("abnormal", "defect")
    name: str = "final_prompts"
    inputs: tuple[str, ...] = ("p_adj", "tags")
    outputs: tuple[str, ...] = ("prompts",)

    def run(self, p_adj: tuple[str, ...], tags: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        return {"prompts": final_prompts(p_adj, tags, self.count_tokens, self.max_tokens, self.fixed)}
