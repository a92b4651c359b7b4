"""What every `iapas` command shares: exit codes, model options and the config they build."""
from __future__ import annotations

import argparse

from ..config import PRECISIONS, Config, at_least_one, build_config, profile_names, read_config_data, recipe_names, unit_interval
from ..errors import ValueRangeError
from ..device import DEVICE_CHOICES

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2

# command-line attribute -> dotted config key; options a command lacks are skipped
CONFIG_OPTIONS = {
    "weights": "weights_dir",
    "device": "device",
    "detector": "detection.weights",
    "detector_backend": "detection.backend",
    "segmenter_backend": "masking.backend",
    "detector_input_size": "detection.input_size",
    "segmenter": "masking.weights",
    "runtime": "masking.runtime",
    "detector_runtime": "detection.runtime",
    "box_threshold": "detection.box_threshold",
    "text_threshold": "detection.text_threshold",
    "nms_iou": "filtering.nms_iou",
    "max_boxes": "detection.max_boxes",
    "size_threshold": "filtering.size_threshold",
    "seed": "calibration.seed",
    "n_images": "calibration.n_images",
    "tagger": "calibration.tagger",
    "tagger_weights": "calibration.tagger_weights",
    "tags": "calibration.tags",
    "llm": "calibration.llm",
    "llm_model": "calibration.llm_model",
    "llm_url": "calibration.llm_url",
    "llm_timeout": "calibration.llm_timeout",
    "template": "calibration.template",
    "cache_dir": "calibration.cache_dir",
    "clip_weights": "clip_methods.weights",
    "adaclip_prompts": "clip_methods.adaclip_prompts",
    "genclip_prompts": "clip_methods.genclip_prompts",
    "adaclip_image_size": "clip_methods.adaclip_image_size",
    "winclip_variant": "clip_methods.winclip_variant",
    "shots": "clip_methods.shots",
    "reference_images": "clip_methods.reference_images",
    "bit_window": "bit_window",
    "batch_size": "batch_size",
    "precision": "precision",
    "prompts": "clip_methods.prompts",
    "threads": "threads",
}


# methods whose trained prompts have a config key of their own (the others read clip_methods.prompts)
METHOD_PROMPT_KEYS = {"adaclip": "clip_methods.adaclip_prompts", "genclip": "clip_methods.genclip_prompts"}


def base_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with the command-line options laid over it."""
    data = read_config_data(args.config) if getattr(args, "config", None) else {}
    config = build_config(getattr(args, "recipe", None), data, getattr(args, "profile", None))
    overrides = {key: getattr(args, attribute, None) for attribute, key in CONFIG_OPTIONS.items()}
    own_key = METHOD_PROMPT_KEYS.get(getattr(args, "method", None) or "")
    if own_key and getattr(args, "prompts", None) and not overrides.get(own_key):
        overrides[own_key] = args.prompts  # --prompts is generic; AdaCLIP and GenCLIP read their own keys
    if getattr(args, "int8", False):
        overrides["detection.int8"] = overrides["masking.int8"] = True
    config = config.updated(overrides)
    if config.detection.backend == "sam3" and getattr(args, "text_threshold", None) is not None:
        # SAM 3 scores instances, not caption tokens (iapas/backends/sam3.py): --box-threshold is its score threshold
        raise ValueRangeError("--text-threshold does not apply to SAM 3 (it has no per-token text scores); "
                              "--box-threshold is its instance score threshold")
    from ..acceleration.threads import configure_threads

    configure_threads(config.threads)  # once per command; library users set threads themselves (Pipeline does only when > 0)
    return config


def _argument_type(check, what: str):
    """An argparse type that parses a number and runs `check` on it; argparse prints the one-line reason."""

    def parse(text: str):
        try:
            number = int(text) if what == "int" else float(text)
            return check(number, "value")
        except (ValueError, ValueRangeError) as error:
            reason = str(error).removeprefix("value ") if isinstance(error, ValueRangeError) else f"not a number: {text!r}"
            raise argparse.ArgumentTypeError(reason) from None

    parse.__name__ = what  # argparse names the type in its message
    return parse


def _non_negative(value: int, name: str) -> int:
    if value < 0:
        raise ValueRangeError(f"{name} must be 0 or more, got {value}")
    return value


def _positive_seconds(value: float, name: str) -> float:
    if not 0 < value < float("inf"):
        raise ValueRangeError(f"{name} must be a positive number of seconds, got {value}")
    return value


def _positive_finite(value: float, name: str) -> float:
    if not 0 < value < float("inf"):  # False for NaN too
        raise ValueRangeError(f"{name} must be a positive finite number, got {value}")
    return value


def _seed(value: int, name: str) -> int:
    if not 0 <= value < 2 ** 32:  # numpy's generators take seeds in [0, 2**32)
        raise ValueRangeError(f"{name} must be a whole number from 0 to {2 ** 32 - 1}, got {value}")
    return value


def _port(value: int, name: str) -> int:
    if not 0 <= value <= 65535:
        raise ValueRangeError(f"{name} must be a TCP port from 0 to 65535, got {value}")
    return value


unit_float = _argument_type(unit_interval, "float")  # thresholds: a number in [0, 1], NaN refused
positive_int = _argument_type(at_least_one, "int")  # counts: 1 or more
non_negative_int = _argument_type(_non_negative, "int")  # limits where 0 means none
positive_seconds = _argument_type(_positive_seconds, "float")
positive_float = _argument_type(_positive_finite, "float")  # rates and scales: finite and above 0
seed_int = _argument_type(_seed, "int")
port_int = _argument_type(_port, "int")

# THE ONE PLACE every numeric command-line option is validated: option destination -> its checked type.
# build_parser() installs these on every command (whatever group or module declares the option) and refuses
# a numeric option missing here, so a new one cannot slip through unchecked. Defaults are not re-parsed, so
# an option whose default 0 means "automatic" (train's --image-size) still refuses an explicit 0.
NUMERIC_OPTIONS = {
    "batch_size": positive_int, "box_threshold": unit_float, "text_threshold": unit_float, "nms_iou": unit_float,
    "size_threshold": unit_float, "detector_input_size": non_negative_int, "max_boxes": non_negative_int,
    "threads": non_negative_int, "shots": non_negative_int, "n_images": positive_int, "seed": seed_int,
    "llm_timeout": positive_seconds, "stall_timeout": positive_seconds, "connect_timeout": positive_seconds,
    "epochs": positive_int, "lr": positive_float, "limit": non_negative_int, "image_size": positive_int,
    "input_size": positive_int, "prompt_length": positive_int, "prompt_depth": non_negative_int,
    "head_width": positive_int, "vision_head_width": positive_int, "text_head_width": positive_int,
    "workers": non_negative_int, "port": port_int, "repeat": positive_int,
    "warmup": non_negative_int, "images": non_negative_int, "size": positive_int, "train_good": positive_int,
    "test_good": non_negative_int, "per_defect": non_negative_int,
}


def _finite(value: float, name: str) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueRangeError(f"{name} must be a finite number, got {value}")
    return value


UNLISTED = {int: _argument_type(lambda value, name: value, "int"), float: _argument_type(_finite, "float")}


def unlisted_numeric_options(parser: argparse.ArgumentParser) -> list[str]:
    """The numeric options with no NUMERIC_OPTIONS rule (tests/test_numeric_and_training.py requires none)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                found += unlisted_numeric_options(command)
        elif action.dest not in NUMERIC_OPTIONS and action.type in (int, float, *UNLISTED.values()):
            found.append("/".join(action.option_strings) or action.dest)
    return found


def apply_numeric_rules(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every numeric option of `parser` and its sub-commands its NUMERIC_OPTIONS type.

    An option missing from the table (one added since) still refuses NaN and inf, and a test names it.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                apply_numeric_rules(command)
        elif action.dest in NUMERIC_OPTIONS:
            action.type = NUMERIC_OPTIONS[action.dest]
        elif action.type in UNLISTED:
            action.type = UNLISTED[action.type]
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options naming the recipe, the config file, the weights and the device."""
    parser.add_argument("--recipe", choices=recipe_names(),
                        help="named preset of every rule: iapas (default) or official (the authors' code); see README")
    parser.add_argument("--profile", choices=profile_names(),
                        help="speed preset over the recipe: fast (SAM 2.1 Hiera-T, 512 px detector input), fast-edgetam, "
                             "fast-omdet (OmDet-Turbo detector), sam3 (SAM 3 detects and masks); see README 'Fast profile'")
    parser.add_argument("--config", help="YAML, TOML or JSON config file over the recipe (see `iapas config show`)")
    parser.add_argument("--weights", help="weights dir laid out as `iapas weights list` shows (iapas/resources/manifest.toml; default: weights)")
    parser.add_argument("--detector", help="Grounding DINO directory (overrides the weights dir)")
    parser.add_argument("--segmenter", help="SAM .pth file or SamModel/Sam2Model/EdgeTamModel directory (overrides the weights dir)")
    parser.add_argument("--detector-backend", help="auto (default: by the directory's model_type), hf-grounding-dino or omdet-turbo")
    parser.add_argument("--segmenter-backend", help="auto (default), sam, hf-sam, hf-sam2 or hf-edgetam")
    parser.add_argument("--detector-input-size", type=non_negative_int,
                        help="detector input size in px (Grounding DINO's shortest edge; 0: the model's own, 800)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, help="default: auto (GPU when there is one)")
    parser.add_argument("--threads", type=non_negative_int,
                        help="torch CPU threads (default 0: the CPUs this process may use, or OMP_NUM_THREADS when set)")
    parser.add_argument("--int8", action="store_true", default=None,
                        help="CPU only: int8 dynamic quantisation of Grounding DINO's and SAM's linear layers, or of the CLIP "
                             "methods' CLIP encoders (faster, maps within a tested tolerance of float32; see README)")


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    """Batching and mixed precision (every method) for segment, bench and eval."""
    parser.add_argument("--batch-size", type=positive_int, help="images per encoder forward: Grounding DINO / SAM, or the CLIP "
                                                                "methods' CLIP (default 1; both engines); results equal one-by-one")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp32 (default), bf16 or fp16 autocast of the models' forwards, CLIP methods included "
                        "(fp16: CUDA only), or auto: bf16 where the device has native bf16 (recent GPUs; CPUs with "
                        "AMX or AVX512-BF16), else fp32")


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """Options choosing the method and what it is prompted with (segment and bench)."""
    parser.add_argument("--method", default="iapas", help="iapas (default), winclip, adaclip, anomalyclip, faprompt, genclip, musc (a set of images) or anomalydino (--shots K)")
    parser.add_argument("--prompt", action="append", help="text prompt; repeat for several (default: abnormal, defect)")
    parser.add_argument("--calibration", help="calibration file from `iapas calibrate` (P_final, S_threshold, thresholds)")
    parser.add_argument("--no-size-filter", action="store_true", help="skip step 2-2's size filter (ablation)")
    parser.add_argument("--category", help="class name for the CLIP methods' prompts (default: object)")
    parser.add_argument("--clip", dest="clip_weights", help="CLIP directory or open_clip file for --method winclip/adaclip")
    parser.add_argument("--adaclip-prompts", help="AdaCLIP weights: ours (`iapas train adaclip`), an official pretrained_*.pth, or a manifest name")
    parser.add_argument("--prompts", help="trained prompts of a learned method (`iapas train METHOD`, or AnomalyCLIP's released epoch_15.pth)")
    parser.add_argument("--genclip-prompts", help="trained GenCLIP prompts (from `iapas train genclip`; --prompts works too)")
    add_adaclip_size_option(parser)
    add_winclip_options(parser)


def add_adaclip_size_option(parser: argparse.ArgumentParser) -> None:
    """AdaCLIP's input size (segment, bench and eval)."""
    parser.add_argument("--adaclip-image-size", type=non_negative_int,
                        help="AdaCLIP input size in px, a multiple of the CLIP's patch size (default 0: the checkpoint's; 518 "
                             "for a released one); --recipe official also resizes with PIL and rounds prompts to fp16")


def add_winclip_options(parser: argparse.ArgumentParser) -> None:
    """WinCLIP's reimplementation and WinCLIP+'s few-shot references (segment, bench and eval)."""
    parser.add_argument("--winclip-variant", choices=("caoyunkang", "anomalib"),
                        help="whose WinCLIP rules: caoyunkang (default; IAP-AS Table 1) or anomalib")
    parser.add_argument("--shots", type=int, help="K normal reference images: WinCLIP+ (paper: 1, 2, 4; default 0, zero-shot) and AnomalyDINO (paper: 1, 2, 4, 8, 16; 0 means 1)")
    parser.add_argument("--reference-images", help="folder of normal images for --shots (eval default: the category's)")


def add_threshold_options(parser: argparse.ArgumentParser) -> None:
    """The detection and filtering thresholds, with the paper's values as defaults."""
    parser.add_argument("--box-threshold", type=unit_float, help="default 0.2 (paper, objects; 0.1 for textures)")
    parser.add_argument("--text-threshold", type=unit_float, help="default 0.2 (paper, objects; 0.1 for textures)")
    parser.add_argument("--nms-iou", type=unit_float, help="default 0.5 (paper)")
    parser.add_argument("--size-threshold", type=unit_float, help="box area / image area cap, default 0.8 (paper)")
    parser.add_argument("--max-boxes", type=non_negative_int,
                        help="keep the K highest-scoring boxes per image before NMS (default 0: all, as the paper)")


def add_preprocessing_options(parser: argparse.ArgumentParser) -> None:
    """Options of the preprocessing steps (tagging and LLM prompting) shared by calibrate and eval."""
    parser.add_argument("--seed", type=int, help="random seed for choosing normal images (default 111, the paper's)")
    parser.add_argument("--tagger", help="auto | clip | ram | fixed (default auto)")
    parser.add_argument("--tagger-weights", help="the tagger's own weights (RAM checkpoint, or a CLIP other than --clip)")
    parser.add_argument("--llm", help="lexicon | gguf | hf | openai (default lexicon, offline)")
    parser.add_argument("--llm-model", help=".gguf file (or smollm2), transformers directory, or the endpoint's model name")
    parser.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1")
    parser.add_argument("--llm-timeout", type=positive_seconds, help="seconds the endpoint may take to answer (default 120)")
    parser.add_argument("--cache-dir", help="LLM answer cache (default ~/.cache/iapas/llm)")


def comma_list(text: str | None) -> list[str]:
    """The non-empty items of a comma-separated option."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]
