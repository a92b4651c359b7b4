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


@dataclass
class FilteringConfig:
    """Box filtering (step 2-2)."""

    nms_iou: float = PAPER_NMS_IOU
    size_threshold: float = PAPER_SIZE_THRESHOLD  # keep boxes whose area / image area is below this


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


@dataclass
class ClipMethodsConfig:
    """The CLIP comparison methods (WinCLIP, AdaCLIP-style)."""

    weights: str = ""  # CLIP directory; empty: the first 'clip' entry of the manifest found in the weights dir
    winclip_scales: list[int] = field(default_factory=lambda: [2, 3])  # window sizes in patches (WinCLIP paper)
    winclip_variant: str = "caoyunkang"  # caoyunkang (caoyunkang/WinClip, IAP-AS Table 1) | anomalib
    shots: int = 0  # WinCLIP+: K normal reference images (WinCLIP paper: 1, 2, 4); 0 is zero-shot
    reference_images: str = ""  # folder of normal images for the K shots; empty in eval: the category's normal images
    adaclip_prompts: str = ""  # trained prompts from `iapas train adaclip`; empty: <weights_dir>/adaclip/adaclip_prompts.pt
    genclip_prompts: str = ""  # trained prompts from `iapas train genclip`; empty: <weights_dir>/genclip/genclip_prompts.pt


@dataclass
class Config:
    """Every setting of a pipeline run."""

    weights_dir: str = "weights"
    device: str = "auto"
    max_image_pixels: int = 80_000_000  # larger images are refused rather than exhausting memory
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
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


def load_config(path: str | Path) -> Config:
    """Read a Config from a .yaml/.yml, .toml or .json file."""
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
    return config_from_dict(data)
