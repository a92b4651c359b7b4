"""The one typed configuration object; the paper's settings are the defaults.

Paper values (IAP-AS, Sec. 5.1 "Parameters"): box and text thresholds 0.2 for object
datasets and 0.1 for texture datasets, NMS IoU 0.5, size threshold 0.8, random seed 111.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import ConfigError

PAPER_OBJECT_THRESHOLD = 0.2  # box and text threshold for object datasets
PAPER_TEXTURE_THRESHOLD = 0.1  # box and text threshold for texture datasets
PAPER_NMS_IOU = 0.5
PAPER_SIZE_THRESHOLD = 0.8
PAPER_SEED = 111
FIXED_PROMPTS = ("abnormal", "defect")  # the fixed prompts P_final always holds
KIND_THRESHOLDS = {"object": PAPER_OBJECT_THRESHOLD, "texture": PAPER_TEXTURE_THRESHOLD}
DEFAULT_RECIPE = "iapas"
RECIPES_DIR = Path(__file__).parent / "resources" / "recipes"
# Categories the paper's datasets treat as textures (MVTec AD textures, KSDD1, MTD, DTD-Synthetic, DAGM2007).
TEXTURE_CATEGORIES = frozenset(
    "carpet grid leather tile wood ksdd1 kolektorsdd kolektor mtd magnetic_tile magnetic-tile dtd dtd-synthetic dagm "
    "dagm2007 fabric".split()
    + [f"class{i}" for i in range(1, 11)]
    + "woven_001 woven_068 woven_104 woven_125 woven_127 blotchy_099 fibrous_183 marbled_078 matted_069 mesh_114 "
      "perforated_037 stratified_154".split()
)


def kind_of(category: str | None) -> str:
    """ "texture" for the paper's texture categories, "object" otherwise."""
    return "texture" if category and category.lower() in TEXTURE_CATEGORIES else "object"


@dataclass
class DetectionConfig:
    """Grounding DINO (step 2-1)."""

    backend: str = "hf-grounding-dino"
    weights: str = ""  # empty: the first detector of weights/manifest.toml found in the weights dir
    box_threshold: float = PAPER_OBJECT_THRESHOLD
    text_threshold: float = PAPER_OBJECT_THRESHOLD
    max_text_tokens: int = 256  # Grounding DINO's text length; longer prompt lists are split
    caption_format: str = "dots"  # dots: "a . b ." | official: " . n1. n2, tag." (stages/detection.py CAPTION_FORMATS)
    phrase_rule: str = "words"  # words: caption tokens above text threshold, punctuation dropped | tokens: as decoded


@dataclass
class FilteringConfig:
    """Box filtering (step 2-2)."""

    nms_iou: float = PAPER_NMS_IOU
    size_threshold: float = PAPER_SIZE_THRESHOLD  # keep boxes whose area / image area is below this
    # calibrated: area ratio < S_threshold | object-per-image: area ratio < size_threshold x this image's object size
    size_rule: str = "calibrated"


@dataclass
class ScoringConfig:
    """The anomaly map (step 2-4)."""

    normalise: str = "clip"  # clip: sum of score x mask clipped to [0, 1] | minmax: min-max per image


@dataclass
class MaskingConfig:
    """SAM (step 2-3)."""

    backend: str = "auto"  # auto: "sam" for a .pth file, "hf-sam" for a directory
    weights: str = ""


@dataclass
class PromptConfig:
    """The text prompts used when no calibration is given."""

    fixed: list[str] = field(default_factory=lambda: list(FIXED_PROMPTS))
    extra: list[str] = field(default_factory=list)


@dataclass
class CalibrationConfig:
    """Preprocessing (steps 1-1 to 1-3)."""

    seed: int = PAPER_SEED
    n_images: int = 3  # normal images drawn at random for tagging
    tagger: str = "auto"  # auto: clip when a CLIP model is in the weights dir, else fixed (--tags or the category)
    tagger_weights: str = ""
    tags: list[str] = field(default_factory=list)
    top_k: int = 4  # CLIP tagger: tags kept
    llm: str = "lexicon"  # lexicon | gguf | hf | openai
    llm_model: str = ""
    llm_url: str = ""
    template: str = "iap_v1"
    cache_dir: str = ""  # empty: ~/.cache/iapas/llm
    size_cap: float = PAPER_SIZE_THRESHOLD
    tag_rule: str = "tagger"  # tagger: the tagger's tags | top1-detected: best Grounding DINO phrase over the images
    normal_split: str = "train"  # eval: draw normal images from the train split, or from the test split's normal images
    thresholds: str = "kind"  # kind: 0.2 objects / 0.1 textures (paper) | config: detection.box_/text_threshold
    prompt_style: str = "template"  # template: one IAP prompt | official: system + user messages per object tag
    answer_cleaning: str = "parse"  # parse: parse_defect_words | official: the official clean_string
    add_fixed_prompts: bool = True  # P_final holds "abnormal" and "defect"
    llm_temperature: float = 0.0  # 0: greedy
    llm_top_p: float = 1.0
    llm_max_new_tokens: int = 96
    llm_seed: int = PAPER_SEED


@dataclass
class ClipMethodsConfig:
    """The CLIP comparison methods (WinCLIP, AdaCLIP-style)."""

    weights: str = ""  # CLIP directory; empty: the first 'clip' entry of the manifest found in the weights dir
    winclip_scales: list[int] = field(default_factory=lambda: [2, 3])  # window sizes in patches (WinCLIP paper)
    adaclip_prompts: str = ""  # trained prompts from `iapas train adaclip`; empty: <weights_dir>/adaclip/adaclip_prompts.pt


@dataclass
class Config:
    """Every setting of a pipeline run."""

    recipe: str = DEFAULT_RECIPE  # the named preset of rules this config started from (resources/recipes/)
    recipe_version: int = 1
    weights_dir: str = "weights"
    device: str = "auto"
    max_image_pixels: int = 80_000_000  # larger images are refused rather than exhausting memory
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    clip_methods: ClipMethodsConfig = field(default_factory=ClipMethodsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def updated(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted-key overrides applied, e.g. {"filtering.nms_iou": 0.4}; None values are skipped."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            if leaf not in node:
                raise ConfigError(f"unknown setting {dotted!r}")
            node[leaf] = value
        return config_from_dict(data)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, path)
        else:
            kwargs[name] = _coerce(value, hint, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is list:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list")
        item_type = hint.__args__[0]
        return [_coerce(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is bool and isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, Path)):
        return str(value)
    raise ConfigError(f"{path} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested plain data, rejecting unknown keys and wrong types."""
    return _build(Config, data, "")


def recipe_names() -> list[str]:
    """The shipped recipes: one TOML file each in resources/recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_settings(name: str) -> dict[str, Any]:
    """A recipe's settings as nested data (its `[recipe]` header becomes `recipe`/`recipe_version`)."""
    path = RECIPES_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r} (shipped: {', '.join(recipe_names())})")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    header = data.pop("recipe", {})
    data["recipe"], data["recipe_version"] = header.get("name", name), int(header.get("version", 1))
    return data


def _merged(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def build_config(recipe: str | None = None, data: dict[str, Any] | None = None) -> Config:
    """Defaults, then the recipe (or the one `data` names), then `data`: a config file's settings win over its recipe."""
    data = dict(data or {})
    name = recipe or data.get("recipe") or DEFAULT_RECIPE
    if recipe and data.get("recipe") not in (None, recipe):
        raise ConfigError(f"the config file names recipe {data['recipe']!r} but --recipe is {recipe!r}")
    layered = _merged(Config().to_dict(), recipe_settings(name))
    data.pop("recipe", None)
    data.pop("recipe_version", None)
    return config_from_dict(_merged(layered, data))


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The settings of a .yaml/.yml, .toml or .json config file, as nested data."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file must end in .yaml, .yml, .toml or .json: {path}")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"cannot parse {path}: {first_line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file must hold a mapping: {path}")
    return data


def load_config(path: str | Path, recipe: str | None = None) -> Config:
    """Read a Config from a .yaml/.yml, .toml or .json file, over its recipe (the one it names, or `recipe`)."""
    return build_config(recipe, read_config_data(path))
