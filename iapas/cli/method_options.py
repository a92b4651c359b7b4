"""Which command-line option belongs to which method, in one table: a misplaced option is refused in one line, never ignored."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..errors import ConfigError
from ..methods.families import ANOMALYDINO, CLIP, CLIPSEG, IAPAS, LEARNED_CLIP, METHOD_FAMILIES, MUSC, SAA, family, methods_of


@dataclass(frozen=True)
class MethodOption:
    """An option only some methods read: its flag, its argparse attribute, those methods and what it is for."""

    flag: str
    attribute: str
    methods: frozenset[str]
    purpose: str  # said when the option is refused: "{flag} is {purpose}"
    instead: dict[str, str] | None = None  # family -> what that family takes instead
    every_method_in: tuple[str, ...] = ()  # commands where every method reads it (eval's --clip is the tagger's too)


IAPAS_ONLY = methods_of(IAPAS)
CLIP_WEIGHTS = methods_of(CLIP, LEARNED_CLIP, MUSC)  # MuSc reads a CLIP too (or DINOv2)
FEW_SHOT = frozenset({"winclip", *methods_of(ANOMALYDINO)})  # WinCLIP+ and AnomalyDINO take K normal references
CLIP_METHODS = methods_of(CLIP, LEARNED_CLIP)
NAMED_CATEGORY = methods_of(CLIP, LEARNED_CLIP, CLIPSEG, SAA)  # prompts or prompt files chosen by the class name
LEARNED = methods_of(LEARNED_CLIP)
GROUNDED = frozenset({*IAPAS_ONLY, *methods_of(SAA)})  # Grounding DINO + SAM weights (SAA+ reuses IAP-AS's backends)
HEPE = frozenset({"hepe"})
TEXT_LLM = frozenset({*IAPAS_ONLY, *HEPE})  # IAP-AS's preprocessing LLM; HEPE's step two
PROMPT_WORD = {CLIP: "the CLIP methods take --category NAME", LEARNED_CLIP: "the CLIP methods take --category NAME"}

METHOD_OPTIONS = (
    MethodOption("--prompt", "prompt", IAPAS_ONLY, "IAP-AS's detector prompt word", PROMPT_WORD),
    MethodOption("--calibration", "calibration", IAPAS_ONLY, "IAP-AS's calibration file"),
    MethodOption("--no-size-filter", "no_size_filter", IAPAS_ONLY, "IAP-AS's size-filter ablation"),
    MethodOption("--box-threshold", "box_threshold", IAPAS_ONLY, "IAP-AS's Grounding DINO box threshold"),
    MethodOption("--text-threshold", "text_threshold", IAPAS_ONLY, "IAP-AS's Grounding DINO text threshold"),
    MethodOption("--nms-iou", "nms_iou", IAPAS_ONLY, "IAP-AS's box NMS IoU"),
    MethodOption("--size-threshold", "size_threshold", IAPAS_ONLY, "IAP-AS's box size filter"),
    MethodOption("--max-boxes", "max_boxes", IAPAS_ONLY, "IAP-AS's cap on detector boxes"),
    MethodOption("--tags", "tags", IAPAS_ONLY, "IAP-AS's object tag for the size rule"),
    MethodOption("--detector", "detector", GROUNDED, "IAP-AS's Grounding DINO weights"),
    MethodOption("--segmenter", "segmenter", GROUNDED, "IAP-AS's SAM weights"),
    MethodOption("--detector-backend", "detector_backend", IAPAS_ONLY, "IAP-AS's detector model family"),
    MethodOption("--segmenter-backend", "segmenter_backend", GROUNDED, "IAP-AS's segmenter model family"),
    MethodOption("--detector-input-size", "detector_input_size", IAPAS_ONLY, "IAP-AS's detector input size"),
    MethodOption("--tagger", "tagger", IAPAS_ONLY, "IAP-AS's preprocessing tagger"),
    MethodOption("--tagger-weights", "tagger_weights", IAPAS_ONLY, "IAP-AS's preprocessing tagger's weights"),
    MethodOption("--llm", "llm", IAPAS_ONLY, "IAP-AS's preprocessing LLM"),
    MethodOption("--llm-model", "llm_model", TEXT_LLM, "IAP-AS's preprocessing LLM's model (HEPE's step two)"),
    MethodOption("--llm-url", "llm_url", TEXT_LLM, "IAP-AS's preprocessing LLM endpoint (HEPE's step two)"),
    MethodOption("--llm-timeout", "llm_timeout", TEXT_LLM, "an LLM endpoint's timeout (IAP-AS's preprocessing, HEPE's agent)"),
    MethodOption("--cache-dir", "cache_dir", TEXT_LLM, "the LLM answer cache (IAP-AS, HEPE)"),
    MethodOption("--mllm-url", "mllm_url", HEPE, "HEPE's multimodal LLM endpoint"),
    MethodOption("--mllm-model", "mllm_model", HEPE, "HEPE's multimodal LLM"),
    MethodOption("--step-two-llm", "step_two_llm", HEPE, "HEPE's step-two LLM"),
    MethodOption("--descriptions", "descriptions", HEPE, "HEPE's description rule"),
    MethodOption("--dinov2", "dinov2", HEPE, "HEPE's DINOv2 weights"),
    MethodOption("--category", "category", NAMED_CATEGORY, "the CLIP methods' class name",
                 {IAPAS: "IAP-AS takes --prompt WORD or a --calibration file"}),
    MethodOption("--clip", "clip_weights", CLIP_WEIGHTS, "the CLIP methods' CLIP weights", every_method_in=("eval",)),
    MethodOption("--prompts", "prompts", LEARNED, "a learned method's checkpoint",
                 {IAPAS: "IAP-AS takes --prompt WORD", CLIP: "WinCLIP learns nothing"}),
    MethodOption("--adaclip-prompts", "adaclip_prompts", frozenset({"adaclip"}), "AdaCLIP's trained weights"),
    MethodOption("--genclip-prompts", "genclip_prompts", frozenset({"genclip"}), "GenCLIP's trained prompts"),
    MethodOption("--winclip-variant", "winclip_variant", frozenset({"winclip"}), "WinCLIP's choice of rules"),
    MethodOption("--adaclip-image-size", "adaclip_image_size", frozenset({"adaclip"}), "AdaCLIP's input size"),
    MethodOption("--shots", "shots", FEW_SHOT, "the few-shot methods' number of normal reference images (WinCLIP+, AnomalyDINO)"),
    MethodOption("--reference-images", "reference_images", FEW_SHOT | HEPE,
                 "the normal reference images (WinCLIP+, AnomalyDINO; HEPE's normal image beside each test image)"),
)


def misplaced_options(args: argparse.Namespace, method: str) -> list[MethodOption]:
    """The options given on the command line that `method` does not read (none for a method outside the family table:
    one registered by a plugin or a test reads what it is given; every built-in method has a family)."""
    if method not in METHOD_FAMILIES:
        return []
    command = getattr(args, "command", None)
    return [option for option in METHOD_OPTIONS
            if getattr(args, option.attribute, None) not in (None, False, [], "")
            and method not in option.methods and command not in option.every_method_in]


def check_method_options(args: argparse.Namespace, method: str | None = None, who: str | None = None) -> None:
    """Refuse, in one line, the first option that does not apply to the method (default: --method), before anything loads."""
    method = method or args.method
    misplaced = misplaced_options(args, method)
    if not misplaced:
        return
    option = misplaced[0]
    instead = (option.instead or {}).get(family(method)) or f"{who or '--method ' + method} does not use it"
    more = f" (also misplaced: {', '.join(o.flag for o in misplaced[1:])})" if len(misplaced) > 1 else ""
    raise ConfigError(f"{option.flag} is {option.purpose}; {instead}{more}")
