"""Step 1-3 text handling: the IAP template, parsing an LLM's answer, and building P_final."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ...config import FIXED_PROMPTS, GROUNDING_DINO_MAX_TEXT_TOKENS
from ...errors import ConfigError
from ...vocabulary import unique_prompts

TEMPLATES_DIR = Path(__file__).parents[2] / "resources" / "prompts"
MAX_CLAUSE_WORDS = 4  # longer items are sentences, not defect clauses
GENERIC_WORDS = frozenset({"defect", "defects", "anomaly", "anomalies", "abnormal", "abnormality", "none", "etc", "other", "others"})
STOPWORDS = frozenset({"a", "an", "the", "of", "on", "in", "and", "or", "with", "to", "for", "is", "are", "be", "can", "may",
                       "other", "some", "various", "any", "possible"})
CHATTER_PREFIX = re.compile(
    r"^.*?\b(?:include|includes|including|such as|like|are|would be|could be|might be|is)\b\s*:?\s*", re.IGNORECASE
)
NUMBERING = re.compile(r"^\s*(?:[-*•·]+|\(?\d+[.)]|\(?[a-z][.)](?=\s))\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Template:
    """A versioned Image-Aware Prompt template from iapas/resources/prompts."""

    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, tags: Sequence[str]) -> str:
        """IAP (+) T_n: the template with the tags filled in."""
        return self.text.replace("{tags}", ", ".join(tags) if tags else "industrial objects and surfaces")


def load_template(name: str = "iap_v1") -> Template:
    """Read a template by name (a file in resources/prompts) or from a path; '#' lines are dropped."""
    path = Path(name) if Path(name).suffix == ".txt" else TEMPLATES_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TEMPLATES_DIR.glob("*.txt")))
        raise ConfigError(f"prompt template not found: {name} (shipped: {known})")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return Template(path.stem, "\n".join(lines).strip() + "\n")


def _json_items(text: str) -> list[str] | None:
    """Strings from the first JSON list or object in the text, if there is one."""
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = json.JSONDecoder().raw_decode(text[match.start():])
        except json.JSONDecodeError:
            continue
        items: list[str] = []

        def walk(node: object) -> None:
            if isinstance(node, str):
                items.append(node)
            elif isinstance(node, list):
                for child in node:
                    walk(child)
            elif isinstance(node, dict):
                for child in node.values():
                    walk(child)

        walk(value)
        if items:
            return items
    return None


def _clean_item(item: str, object_words: frozenset[str]) -> str:
    item = NUMBERING.sub("", item.strip())
    item = re.sub(r"\*\*|__|`", "", item)  # markdown emphasis
    item = item.split(":", 1)[-1] if re.match(r"^[^:]{0,40}:\s*\S", item) and "," not in item else item
    item = re.sub(r"\(.*?\)", " ", item)
    item = re.sub(r"[^a-z \-]", " ", item.lower())
    words = [w.strip("-") for w in item.split()]
    words = [w for w in words if w and w not in object_words]
    while words and words[0] in STOPWORDS:
        words.pop(0)
    while words and words[-1] in STOPWORDS:
        words.pop()
    return " ".join(words)


def drop_unfinished_item(answer: str) -> str:
    """An answer cut at the token limit, without its last item, which may be a half word ("discol")."""
    cut = max(answer.rfind(separator) for separator in (",", ";", "\n"))
    return answer[:cut].rstrip() if cut > 0 else answer


def parse_defect_words(answer: str, object_names: Iterable[str] = ()) -> tuple[str, ...]:
    """Turn an LLM's answer (list, numbered lines, JSON or prose) into short, clean defect clauses.

    Items are lower-cased, stripped of numbering, markdown, parentheses, object names and chatter,
    kept only when one to four words long, and deduplicated in order.
    """
    object_words = frozenset(word for name in object_names for word in name.lower().split())
    raw = _json_items(answer)
    if raw is None:
        raw = []
        for line in answer.splitlines():
            line = line.strip()
            if not line or line.endswith(":") and len(line.split()) > 1 and "," not in line:
                continue
            if len(line.split()) > MAX_CLAUSE_WORDS and ("," in line or re.search(r"\b(include|such as|like)\b", line, re.I)):
                line = CHATTER_PREFIX.sub("", line) if re.search(r"\b(include|includes|including|such as|like)\b", line, re.I) else line
            raw.extend(re.split(r",|;|\band\b|\bor\b|/", line))
    cleaned = []
    for item in raw:
        clause = _clean_item(item, object_words)
        if clause and 1 <= len(clause.split()) <= MAX_CLAUSE_WORDS and clause not in GENERIC_WORDS:
            cleaned.append(clause)
    return tuple(dict.fromkeys(cleaned))


def final_prompts(
    p_adj: Sequence[str],
    tags: Sequence[str],
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int = GROUNDING_DINO_MAX_TEXT_TOKENS,
    fixed: Sequence[str] = FIXED_PROMPTS,
) -> tuple[str, ...]:
    """P_final = fixed prompts + P_adj + tags, deduplicated, cut where Grounding DINO's text length ends.

    Each prompt costs its tokens plus one for the " . " separator; two more go to [CLS] and [SEP].
    Without a tokenizer a prompt is counted as its number of words (a lower bound for WordPiece).
    """
    count = count_tokens or (lambda text: len(text.split()))
    kept, used = [], 2
    for prompt in unique_prompts((*fixed, *p_adj, *tags)):
        cost = count(prompt) + 1
        if used + cost > max_tokens:
            break
        kept.append(prompt)
        used += cost
    return tuple(kept)


OFFICIAL_MESSAGES_FILE = TEMPLATES_DIR / "official_messages.toml"


@dataclass(frozen=True)
class OfficialMessages:
    """The official recipe's system and user messages (paraphrased from utils/function.py process_anomaly_tags_2)."""

    system: str
    user: str
    version: int = 1

    @classmethod
    def load(cls, path: Path = OFFICIAL_MESSAGES_FILE) -> "OfficialMessages":
        import tomllib

        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["system"].strip(), " ".join(data["user"].split()), int(data.get("version", 1)))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.system, self.user]).encode("utf-8")).hexdigest()

    def render(self, object_tag: str) -> list[dict]:
        """Chat messages for one object tag."""
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.replace("{object_tag}", object_tag)},
        ]


def official_clean(answer: str | None, add_fixed: bool = True) -> tuple[str, ...]:
    """The LLM answer cleaned as utils/function.py clean_string does, as a tuple of caption items.

    In order: strip '.' and ',' at the ends; drop doubled quotes; delete the substrings "word"/"Word"
    and "none"/"None" (inside words too, as the official code does); delete the whole words "of" and
    "part"; append "abnormal" and "defect" (the official code always does: `add_fixed`); split at
    commas, remove repeated words inside each item, drop repeated items, then delete every '.'.
    Two deliberate differences, neither changing the items: repeated items keep their first position
    (the official code passes them through a Python set, whose order changes from run to run), and
    empty items are dropped (the official caption would hold them as ". ."). The official code then
    joins the items with '. ' into its caption; see stages/detection.py official_caption.
    """
    text = (answer or "").strip(".,")
    text = text.replace("''", "").replace('""', "")
    for fragment in ("word", "Word", "none", "None"):
        text = text.replace(fragment, "")
    text = re.sub(r"\bof\b", "", text)
    text = re.sub(r"\bpart\b", "", text)
    if add_fixed:
        text += ",abnormal, defect"
    items = [" ".join(dict.fromkeys(piece.split())) for piece in text.split(",")]
    items = [item.replace(".", "").strip(".,").strip() for item in dict.fromkeys(items)]
    return tuple(dict.fromkeys(item for item in items if item))
