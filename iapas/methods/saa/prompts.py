"""SAA+'s hybrid prompts for a category: language prompts (general + manual) and property prompts, from iapas/resources/saa/."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError

SAA_RESOURCES = Path(__file__).parents[2] / "resources" / "saa"
# iapas dataset name -> the SAA+ prompt file it takes (ksdd1: as the IAP-AS repository's copy maps it)
PROMPT_FILES = {"mvtec": "mvtec", "visa": "visa", "ksdd2": "ksdd2", "ksdd1": "ksdd2", "mtd": "mtd"}


@dataclass(frozen=True)
class SaaPrompts:
    """Everything SAA+ is told about a category.

    language: (caption, filtered phrase) pairs, the general ones first (eval_SAA.py: general + manual);
    object_caption: the object pass's caption; objects: objects per image; max_anomalies: masks kept by the
    confidence ranking; max_area: anomaly boxes must be smaller than this fraction of the largest object box.
    """

    language: tuple[tuple[str, str], ...]
    object_caption: str
    objects: int
    max_anomalies: int
    max_area: float
    source: str  # which file (and category) the facts came from, or "general" for the fallback

    @property
    def object_max_area(self) -> float:
        """SAA/model.py set_property_text_prompts: an object box is smaller than 1 / (objects per image) of the image."""
        return 1.0 / self.objects


def general_prompts(category: str) -> list[tuple[str, str]]:
    """SAA/prompts/general_prompts.py: each template with the category name, the category as the filtered phrase."""
    data = tomllib.loads((SAA_RESOURCES / "general.toml").read_text(encoding="utf-8"))
    return [(template.format(category), category) for template in data["templates"]]


def prompts_for(dataset: str, category: str) -> SaaPrompts:
    """The category's prompts from its dataset's SAA+ file; other datasets: the general prompts and the fallback facts."""
    general = general_prompts(category)
    name = PROMPT_FILES.get(dataset)
    if name is not None:
        table = tomllib.loads((SAA_RESOURCES / f"{name}.toml").read_text(encoding="utf-8"))
        entry = table.get(category) or (next(iter(table.values())) if len(table) == 1 else None)
        if entry is None:
            raise ConfigError(f"SAA+ has no prompts for {dataset} category {category!r} "
                              f"(iapas/resources/saa/{name}.toml: {', '.join(table)})")
        manual = [(caption, phrase) for caption, phrase in entry["prompts"]]
        return SaaPrompts(tuple(general + manual), entry["object"], int(entry["objects"]), int(entry["max_anomalies"]),
                          float(entry["max_area"]), f"{name}.toml")
    fallback = tomllib.loads((SAA_RESOURCES / "general.toml").read_text(encoding="utf-8"))["fallback"]
    return SaaPrompts(tuple(general), category, int(fallback["objects"]), int(fallback["max_anomalies"]),
                      float(fallback["max_area"]), "general")
