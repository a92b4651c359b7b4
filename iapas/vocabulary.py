"""Word lists shipped with iapas: defect words (kept in one file) and the tagger's vocabulary."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable

RESOURCES = Path(__file__).parent / "resources"
DEFECT_WORDS_FILE = RESOURCES / "defect_words.txt"
TAG_VOCABULARY_FILE = RESOURCES / "tag_vocabulary.txt"
LEXICON_FILE = RESOURCES / "defect_lexicon.toml"  # the offline "LLM" table (backends/llm.py LexiconLLM)


def read_word_list(path: Path) -> tuple[str, ...]:
    """Lower-cased entries of a one-per-line file, comments and blanks skipped, order kept."""
    lines = (line.split("#", 1)[0].strip().lower() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return tuple(dict.fromkeys(line for line in lines if line))


def normalise_prompt(text: str) -> str:
    """The one spelling rule for prompts and tags: lower case, runs of whitespace as one space, no edges."""
    return " ".join(text.lower().split())


def unique_prompts(prompts: Iterable[str]) -> tuple[str, ...]:
    """Normalised prompts, empty ones dropped and duplicates removed, first occurrence kept."""
    return tuple(dict.fromkeys(p for p in map(normalise_prompt, prompts) if p))


@lru_cache(maxsize=1)
def defect_words() -> frozenset[str]:
    return frozenset(read_word_list(DEFECT_WORDS_FILE))


def tag_vocabulary() -> tuple[str, ...]:
    return read_word_list(TAG_VOCABULARY_FILE)


def remove_defect_words(tags: Iterable[str]) -> tuple[str, ...]:
    """Tags with every defect word removed (a tag made only of defect words disappears), deduplicated."""
    words = defect_words()
    kept = []
    for tag in tags:
        tag = normalise_prompt(tag)
        if tag in words:
            continue
        remaining = " ".join(word for word in tag.split() if word not in words)
        if remaining:
            kept.append(remaining)
    return tuple(dict.fromkeys(kept))
