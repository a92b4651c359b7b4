"""The one typed configuration object; the paper's settings are the defaults.

Paper values (IAP-AS, Sec. 5.1 "Parameters"): box and text thresholds 0.2 for object
datasets and 0.1 for texture datasets, NMS IoU 0.5, size threshold 0.8, random seed 111.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import yaml

from .errors import ConfigError, ValueRangeError
from .folders import default_weights_dir

PAPER_OBJECT_THRESHOLD = 0.2  # box and text threshold for object datasets
PAPER_TEXTURE_THRESHOLD = 0.1  # box and text threshold for texture datasets
PAPER_NMS_IOU = 0.5
PAPER_SIZE_THRESHOLD = 0.8
PAPER_SEED = 111
GROUNDING_DINO_MAX_TEXT_TOKENS = 256  # Grounding DINO's text length (max_text_len of its config, [CLS] and [SEP] included)
DEFAULT_MAX_IMAGE_PIXELS = 80_000_000  # larger images are refused rather than exhausting memory (config max_image_pixels)
DEFAULT_LLM_TIMEOUT_S = 120.0  # an HTTP LLM endpoint that has not answered by then is given up
FIXED_PROMPTS = ("abnormal", "defect")  # the fixed prompts P_final always holds
KIND_THRESHOLDS = {"object": PAPER_OBJECT_THRESHOLD, "texture": PAPER_TEXTURE_THRESHOLD}
DEFAULT_RECIPE = "iapas"
RECIPES_DIR = Path(__file__).parent / "resources" / "recipes"
PROFILES_DIR = Path(__file__).parent / "resources" / "profiles"  # speed presets laid over a recipe (--profile)
# Categories the paper's datasets treat as textures (MVTec AD textures, KSDD1, MTD, DTD-Synthetic, DAGM2007).
TEXTURE_CATEGORIES = frozenset(
    "carpet grid leather tile wood ksdd1 kolektorsdd kolektor mtd magnetic_tile magnetic-tile dtd dtd-synthetic dagm "
    "dagm2007 fabric".split()
    + [f"class{i}" for i in range(1, 11)]
    + "woven_001 woven_068 woven_104 woven_125 woven_127 blotchy_099 fibrous_183 marbled_078 matted_069 mesh_114 "
      "perforated_037 stratified_154".split()
)


# Datasets the paper treats as textures as a whole, whatever their category names.
TEXTURE_DATASETS = frozenset({"ksdd1", "mtd", "dtd", "dagm"})


def kind_of(category: str | None, dataset: str | None = None) -> str:
    """ "texture" for the paper's texture datasets and categories, "object" otherwise (the one texture rule)."""
    if dataset in TEXTURE_DATASETS:
        return "texture"
    return "texture" if category and category.lower() in TEXTURE_CATEGORIES else "object"


def unit_interval(value: Any, name: str) -> float:
    """`value` as a float in [0, 1], or a one-line ValueRangeError naming the setting (NaN included).

    Any real number is one: numpy's scalars (np.float32(0.5)) register as numbers.Real; bool does not count.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueRangeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # False for NaN too
        raise ValueRangeError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def at_least_one(value: Any, name: str) -> int:
    """`value` as an int >= 1, or a one-line ValueRangeError naming the setting."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueRangeError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


@dataclass
class DetectionConfig:
    """Grounding DINO (step 2-1)."""

    backend: str = "auto"  # auto: by the directory's model_type (hf-grounding-dino, omdet-turbo); a .pth is Grounding DINO
    weights: str = ""  # empty: the first detector of the weights manifest found in the weights dir (of the backend's family)
    input_size: int = 0  # the processor's shortest edge in pixels (Grounding DINO: 800); 0: the model's own
    box_threshold: float = PAPER_OBJECT_THRESHOLD
    text_threshold: float = PAPER_OBJECT_THRESHOLD
    max_text_tokens: int = GROUNDING_DINO_MAX_TEXT_TOKENS  # longer prompt lists are split
    caption_format: str = "dots"  # dots: "a . b ." | official: " . n1. n2, tag." (stages/detection.py CAPTION_FORMATS)
    phrase_rule: str = "words"  # words: caption tokens above text threshold, punctuation dropped | tokens: as decoded
    runtime: str = "torch"  # torch | onnx | openvino: what runs the vision backbone (iapas/runtimes)
    int8: bool = False  # CPU only: int8 dynamic quantisation of the linear layers (iapas/acceleration/quantisation.py; --int8)
    # keep only the K highest-scoring boxes of each image, before NMS; 0: all (the paper and the official code)
    max_boxes: int = 0
    # the inverse-sigmoid clamp of Grounding DINO's box refinement: 1e-3 as the original code (groundingdino
    # util/misc.py inverse_sigmoid), which every released checkpoint was trained with; 1e-5 is transformers' port
    refinement_eps: float = 1e-3
    # where boxes are clamped to the image: at-detection (before NMS and the size rule) | before-masking (official)
    box_clamp: str = "at-detection"


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

    backend: str = "auto"  # auto: "sam" for a .pth file, a directory by its model_type (hf-sam, hf-sam2, hf-edgetam)
    weights: str = ""
    runtime: str = "torch"  # torch | onnx | openvino: what runs the image encoder (iapas/runtimes)
    int8: bool = False  # CPU only: int8 dynamic quantisation of the image encoder's linear layers (--int8)


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
    llm_timeout: float = DEFAULT_LLM_TIMEOUT_S  # seconds an HTTP endpoint may take to answer
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
    winclip_variant: str = "caoyunkang"  # caoyunkang (caoyunkang/WinClip, IAP-AS Table 1) | anomalib
    shots: int = 0  # WinCLIP+: K normal reference images (WinCLIP paper: 1, 2, 4); 0 is zero-shot
    reference_images: str = ""  # folder of normal images for the K shots; empty in eval: the category's normal images
    adaclip_prompts: str = ""  # a checkpoint (ours or an official pretrained_*.pth) or a manifest name; empty: <weights_dir>/adaclip/adaclip_prompts.pt, else a released one found
    prompts: str = ""  # trained prompts of the chosen learned method (--prompts); empty: <weights_dir>/<method>/<method>_prompts.pt
    genclip_prompts: str = ""  # trained prompts from `iapas train genclip`; empty: <weights_dir>/genclip/genclip_prompts.pt
    # AdaCLIP / GenCLIP / WinCLIP: official rules (GenCLIP has no code: its paper is the default; WinCLIP: winclip_variant)
    adaclip_image_size: int = 0  # AdaCLIP input px; 0: the checkpoint's (518 for a released one: train.py/test.py --image_size)
    adaclip_resize: str = "antialiased"  # antialiased: float bicubic, antialiased | pil: PIL bicubic of the uint8 image (official)
    adaclip_prompt_precision: str = "fp32"  # fp32 | fp16: every inserted prompt rounded through fp16 (official .half())
    # AnomalyCLIP / FAPrompt: official rules (the official recipe sets each to what the authors' code does;
    # iapas/prompt_learning/rules.py reads them; docs/methods/official-anomalyclip-faprompt.md compares the two)
    anomalyclip_focal: str = "binary"  # binary: focal on the abnormal map | two-class: loss.py FocalLoss on both, smooth 1e-5
    anomalyclip_deep_prompts: str = "fp32"  # fp32 | fp16: deep text prompts rounded to fp16 (AnomalyCLIP_lib .half())
    anomalyclip_input_resize: str = "float"  # float: antialiased bicubic of float pixels | pil-uint8: PIL bicubic of the uint8 image
    anomalyclip_train_masks: str = "nearest"  # nearest | bilinear: PIL bilinear to the input size, then > 0.5
    anomalyclip_train_precision: str = "auto"  # auto: bf16 autocast on a GPU | fp32
    faprompt_prior_patches: str = "top"  # top: the k patches of highest abnormality (paper Eq. 6) | first: patches 0..k-1
    # HEPE (iapas/methods/hepe, docs/methods/hepe.md): its prompt agent, DINOv2 and Eq. 1's scale
    hepe_mllm_url: str = ""  # OpenAI-compatible endpoint of the step-one MLLM; empty: hepe_mllm_model as a local directory
    hepe_mllm_model: str = ""  # the endpoint's model name, or a local transformers VLM directory; neither: fixed prompts
    hepe_step_two: str = "mllm"  # mllm (the step-one model) | openai | gguf | hf (with calibration.llm_url / llm_model)
    hepe_descriptions: str = "image"  # image: one agent call per test image (paper Fig. 2) | category: the first test image's, reused
    hepe_prompt_version: str = "v1"  # resources/prompts/hepe_*_<version>.txt
    hepe_dinov2: str = ""  # DINOv2 ViT-S directory; empty: the first 'dinov2' manifest entry in the weights dir
    hepe_logit_scale: float = 1.0  # Eq. 1: softmax of the plain cosine (1); AdaCLIP's code: 100
    # the CLIP forwards' autocast: fp32 (the reference numbers) unless asked; `--precision` sets it and the top-level one
    precision: str = "fp32"


@dataclass
class MuscConfig:
    """MuSc (iapas/methods/musc): the defaults are the official configs/musc.yaml and scripts/musc.sh."""

    backbone: str = "clip"  # clip (clip_methods.weights, else ViT-L-14-336 when present) | dinov2 (musc.weights, else the manifest's)
    weights: str = ""  # a DINOv2 directory for backbone = dinov2
    image_size: int = 0  # input side; 0: 518 where the patch size divides it (the paper's), else 512 (the ViT-B scripts')
    layers: list[int] = field(default_factory=list)  # 1-based blocks; empty: the four quarters (6 12 18 24 of ViT-L)
    degrees: list[int] = field(default_factory=lambda: [1, 3, 5])  # LNAMD's r
    divide: int = 1  # divide_num: the set is scored as this many subsets, drawn evenly from each folder
    rscin: list[int] = field(default_factory=list)  # RsCIN's k list; empty: the dataset's (visa 1 8 9, else 1 2 3); [0]: off


@dataclass
class AnomalyDinoConfig:
    """AnomalyDINO (iapas/methods/anomalydino); K shots come from clip_methods.shots / reference_images (--shots, --reference-images)."""

    weights: str = ""  # a DINOv2 directory; empty: the manifest's dinov2-small (ViT-S/14, the authors' default)
    resolution: int = 448  # run_anomalydino.py --resolution: the shorter side after resizing
    preprocess: str = "agnostic"  # run_anomalydino.py --preprocess: src/utils.py get_dataset_info's modes
    neighbours: int = 1  # run_anomalydino.py --k_neighbors


@dataclass
class Config:
    """Every setting of a pipeline run."""

    recipe: str = DEFAULT_RECIPE  # the named preset of rules this config started from (resources/recipes/)
    recipe_version: int = 1
    profile: str = ""  # the speed preset laid over the recipe (resources/profiles/), "" for none
    # --weights; default: $IAPAS_WEIGHTS, else ./weights when it holds files, else the per-user folder (iapas/folders.py)
    weights_dir: str = field(default_factory=lambda: str(default_weights_dir()))
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0: the CPUs this process may use, unless OMP_NUM_THREADS is set (iapas/acceleration/threads.py)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    bit_window: list[float] = field(default_factory=list)  # [LOW, HIGH] for 16-bit/float images; empty: iapas/images.py's rule
    batch_size: int = 1  # images per detector/encoder forward (--batch-size); results equal one-by-one (Pipeline.segment_many)
    # fp32 | bf16 | fp16 | auto: autocast of IAP-AS's models (iapas/acceleration/precision.py). A bare Config keeps fp32, the
    # reference numbers; the iapas recipe (the CLI's default) runs auto, the official recipe fp32; tolerance: tests/test_batching.py
    precision: str = "fp32"
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    clip_methods: ClipMethodsConfig = field(default_factory=ClipMethodsConfig)
    musc: MuscConfig = field(default_factory=MuscConfig)
    anomalydino: AnomalyDinoConfig = field(default_factory=AnomalyDinoConfig)

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
                node = node.get(key) if isinstance(node, dict) else None
                if node is None:
                    raise ConfigError(f"unknown setting {dotted!r}")
            if not isinstance(node, dict) or leaf not in node:
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


# settings that are fractions (thresholds, IoU, area ratios) and settings that count something
UNIT_INTERVAL_SETTINGS = ("detection.box_threshold", "detection.text_threshold", "filtering.nms_iou",
                          "filtering.size_threshold", "calibration.size_cap")
# model arithmetic; iapas/acceleration/precision.py maps each to its autocast dtype (auto: bf16 where the device has native bf16)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
PRECISION_SETTINGS = ("precision", "clip_methods.precision")  # IAP-AS's models, the CLIP methods' CLIP
COUNT_SETTINGS = ("calibration.n_images", "calibration.top_k", "detection.max_text_tokens", "max_image_pixels", "batch_size")


# The CLIP methods' official rules, the values each may take (the first is the default; AdaCLIP's:
# iapas/prompt_learning/vision.py PIXEL_RESIZES, methods/adaclip/model.py PROMPT_PRECISIONS)
ADACLIP_RESIZES = ("antialiased", "pil")
ADACLIP_PROMPT_PRECISIONS = ("fp32", "fp16")
CLIP_RULE_CHOICES = {  # the CLIP methods' official-rule settings and the values each takes
    "adaclip_resize": ADACLIP_RESIZES,
    "adaclip_prompt_precision": ADACLIP_PROMPT_PRECISIONS,
    "anomalyclip_focal": ("binary", "two-class"),
    "anomalyclip_deep_prompts": ("fp32", "fp16"),
    "anomalyclip_input_resize": ("float", "pil-uint8"),
    "anomalyclip_train_masks": ("nearest", "bilinear"),
    "anomalyclip_train_precision": ("auto", "fp32"),
    "faprompt_prior_patches": ("top", "first"),
    "hepe_step_two": ("mllm", "openai", "gguf", "hf", "lexicon"),  # lexicon is refused by the agent in its own words
    "hepe_descriptions": ("image", "category"),
}


def _setting(config: Config, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def validate_config(config: Config) -> Config:
    """Check every setting's range; the first bad one raises a one-line ValueRangeError."""
    for dotted in UNIT_INTERVAL_SETTINGS:
        unit_interval(_setting(config, dotted), dotted)
    for dotted in COUNT_SETTINGS:
        at_least_one(_setting(config, dotted), dotted)
    for dotted in PRECISION_SETTINGS:
        if _setting(config, dotted) not in PRECISIONS:
            raise ValueRangeError(f"{dotted} must be one of {', '.join(PRECISIONS)}, got {_setting(config, dotted)!r}")
    eps = config.detection.refinement_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 0.5:
        raise ValueRangeError(f"detection.refinement_eps must be a number in (0, 0.5), got {eps!r}")
    if config.detection.input_size < 0:
        raise ValueRangeError(f"detection.input_size must be 0 (the model's own) or a size in pixels, got {config.detection.input_size}")
    if isinstance(config.detection.max_boxes, bool) or config.detection.max_boxes < 0:
        raise ValueRangeError(f"detection.max_boxes must be 0 (no cap) or a number of boxes, got {config.detection.max_boxes!r}")
    if isinstance(config.threads, bool) or config.threads < 0:
        raise ValueRangeError(f"threads must be 0 (auto) or more, got {config.threads!r}")
    check_clip_method_rules(config.clip_methods)
    timeout = config.calibration.llm_timeout
    if not timeout > 0 or timeout == float("inf"):
        raise ValueRangeError(f"calibration.llm_timeout must be a positive number of seconds, got {timeout!r}")
    return config


def check_clip_method_rules(clip_methods: ClipMethodsConfig) -> None:
    """The CLIP methods' official-rule settings: a one-line ValueRangeError for the first bad one."""
    size = clip_methods.adaclip_image_size
    if isinstance(size, bool) or size < 0:
        raise ValueRangeError(f"clip_methods.adaclip_image_size must be 0 (the checkpoint's) or a size in pixels, got {size!r}")
    for name, choices in CLIP_RULE_CHOICES.items():
        value = getattr(clip_methods, name)
        if value not in choices:
            raise ValueRangeError(f"clip_methods.{name} must be one of {', '.join(choices)}, got {value!r}")
    scale = clip_methods.hepe_logit_scale
    if isinstance(scale, bool) or not 0 < scale < float("inf"):
        raise ValueRangeError(f"clip_methods.hepe_logit_scale must be a positive number, got {scale!r}")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested plain data, rejecting unknown keys, wrong types and out-of-range values."""
    config = validate_config(_build(Config, data, ""))
    if config.detection.int8 or config.masking.int8:
        # int8 layers take float32 inputs: the recipe's or a profile's `auto` yields to int8 (an explicit bf16/fp16 is refused at load)
        if config.precision == "auto":
            config = dataclasses.replace(config, precision="fp32")
        if config.clip_methods.precision == "auto":
            config = dataclasses.replace(config, clip_methods=dataclasses.replace(config.clip_methods, precision="fp32"))
    return config


def preset_names(directory: Path) -> list[str]:
    """The presets shipped in a resources folder (recipes, profiles): one TOML file each."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def preset_data(directory: Path, kind: str, name: str) -> dict[str, Any]:
    """A shipped preset's TOML as nested data, or a one-line ConfigError naming the shipped ones."""
    path = directory / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown {kind} {name!r} (shipped: {', '.join(preset_names(directory))})")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def recipe_names() -> list[str]:
    """The shipped recipes: one TOML file each in resources/recipes."""
    return preset_names(RECIPES_DIR)


def recipe_settings(name: str) -> dict[str, Any]:
    """A recipe's settings as nested data (its `[recipe]` header becomes `recipe`/`recipe_version`)."""
    data = preset_data(RECIPES_DIR, "recipe", name)
    header = data.pop("recipe", {})
    data["recipe"], data["recipe_version"] = header.get("name", name), int(header.get("version", 1))
    return data


def profile_names() -> list[str]:
    """The shipped speed profiles: one TOML file each in resources/profiles."""
    return preset_names(PROFILES_DIR)


def profile_settings(name: str) -> dict[str, Any]:
    """A profile's settings as nested data (its `[profile]` header becomes `profile`)."""
    data = preset_data(PROFILES_DIR, "profile", name)
    data["profile"] = data.pop("profile", {}).get("name", name)
    return data


def _merged(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def build_config(recipe: str | None = None, data: dict[str, Any] | None = None, profile: str | None = None) -> Config:
    """Defaults, then the recipe (or the one `data` names), then the profile (or the one `data` names), then `data`.

    A config file's settings win over its recipe and profile; a profile only swaps models and sizes, so it
    lays over any recipe.
    """
    data = dict(data or {})
    name = recipe or data.get("recipe") or DEFAULT_RECIPE
    if recipe and data.get("recipe") not in (None, recipe):
        raise ConfigError(f"the config file names recipe {data['recipe']!r} but --recipe is {recipe!r}")
    if profile and data.get("profile") not in (None, "", profile):
        raise ConfigError(f"the config file names profile {data['profile']!r} but --profile is {profile!r}")
    layered = _merged(Config().to_dict(), recipe_settings(name))
    speed = profile or data.get("profile")
    if speed:
        layered = _merged(layered, profile_settings(speed))
    for key in ("recipe", "recipe_version", "profile"):
        data.pop(key, None)
    return config_from_dict(_merged(layered, data))


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The settings of a .yaml/.yml, .toml or .json config file, as nested data."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file is not UTF-8 text: {path} (byte {error.start})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file must end in .yaml, .yml, .toml or .json: {path}")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as error:
        first_line = (str(error).splitlines() or ["nested too deep"])[0]  # RecursionError: "[[[[..." a parser cannot descend
        raise ConfigError(f"cannot parse {path}: {first_line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file must hold a mapping: {path}")
    return data


def load_config(path: str | Path, recipe: str | None = None, profile: str | None = None) -> Config:
    """Read a Config from a .yaml/.yml, .toml or .json file, over its recipe and profile (the ones it names, or those given)."""
    return build_config(recipe, read_config_data(path), profile)
