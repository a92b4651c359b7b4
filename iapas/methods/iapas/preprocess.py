"""Preprocessing (steps 1-1 to 1-3) as a stage graph that produces a Calibration."""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ...backends.base import Detector
from ...backends.llm import GenerationOptions, LLMSpec, load_llm
from ...backends.taggers import TAGGERS, TaggerSpec
from ...calibration import Calibration
from ...config import KIND_THRESHOLDS, Config, kind_of
from ...errors import ConfigError, InputImageError, WeightsError
from ...stages.graph import StageGraph
from ...images import find_images, load_image, parse_window
from ...config import FIXED_PROMPTS
from ...registry import Registry
from .prompting import OfficialMessages, load_template
from ...stages.calibration import SizeThresholdStage
from ...stages.prompting import FinalPromptStage, LlmPromptStage, OfficialLlmStage
from ...stages.tagging import TagStage, TopOneTagStage
from ...weights.manifest import chosen_or_found

PREPROCESS_INPUTS = ("normal_images", "calibration_images", "tags", "p_adj", "llm_answer", "size_threshold", "object_size")
PREPROCESS_ABLATIONS = ("tagging", "llm")  # steps 1-1 and 1-3 can be switched off; their stages bear these names
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "iapas" / "llm"
ImageSource = str | Path | Sequence[str | Path]  # a folder of images, or a list of image files
NO_CUT = 1 << 30  # the official recipe never cuts P_final: long lists are split into captions at detection

# calibration.thresholds: the detection thresholds of a calibration for a category kind
THRESHOLD_RULES: Registry[Callable[[Config, str], tuple[float, float]]] = Registry("threshold rule")
THRESHOLD_RULES.register("kind")(lambda config, kind: (KIND_THRESHOLDS[kind], KIND_THRESHOLDS[kind]))
THRESHOLD_RULES.register("config")(lambda config, kind: (config.detection.box_threshold, config.detection.text_threshold))


def select_images(paths: Sequence[Path], count: int, seed: int) -> list[Path]:
    """`count` images drawn at random with `seed` from the sorted paths (all of them if fewer)."""
    ordered = sorted(Path(p) for p in paths)
    return ordered if count >= len(ordered) else sorted(random.Random(seed).sample(ordered, count))


def image_paths(source: ImageSource) -> list[Path]:
    """A folder's images, or the given list of files."""
    if isinstance(source, (str, Path)):
        found = find_images(source)
        if not found:
            raise InputImageError(f"no images found in folder: {source}")
        return found
    return [Path(p) for p in source]


def resolve_tagger_spec(config: Config, category: str | None, device: str, note: Callable[[str], None]) -> TaggerSpec:
    """The tagger to use: `auto` picks CLIP when a CLIP model is present, else the given tags or the category."""
    settings = config.calibration
    fixed_tags = tuple(settings.tags) or ((category.replace("_", " "),) if category else ())
    backend, weights = settings.tagger, settings.tagger_weights or (config.clip_methods.weights if settings.tagger in ("auto", "clip") else "")
    resample = "bilinear"  # recognize-anything's own resize (ram/transform.py get_transform)
    if backend == "auto-ram":  # the official recipe: RAM as the authors used it, when its checkpoint is here
        try:
            weights = str(chosen_or_found("tagger-ram", settings.tagger_weights, config.weights_dir))
            backend, resample = "ram", "bicubic"  # IAP-ZSAS util/function.py load_image: PIL's default resize to 384
        except WeightsError:
            note(f"note: RAM (ram_swin_large_14m.pth in {config.weights_dir}/; `iapas weights download "
                 "ram-swin-large-14m`) is not available; tagging as --tagger auto does, so tags may differ from the official code's")
            backend, weights = "auto", settings.tagger_weights or config.clip_methods.weights
    if backend == "ram" and not weights:
        weights = str(chosen_or_found("tagger-ram", "", config.weights_dir))
    if backend == "auto":
        if settings.tags:
            backend = "fixed"
        else:
            try:
                weights = str(chosen_or_found("clip", weights, config.weights_dir))
                backend = "clip"
            except Exception:
                backend = "fixed"
                note(f"note: no CLIP model in {config.weights_dir}/; tagging with {list(fixed_tags) or 'no tags'} (--tags to choose)")
    if backend == "fixed" and not fixed_tags:
        raise ConfigError("the fixed tagger needs --tags or --category")
    if backend == "clip":
        weights = str(chosen_or_found("clip", weights, config.weights_dir))
    if backend not in TAGGERS:
        TAGGERS.get(backend)  # raises the one-line "unknown tagger backend" error
    return TaggerSpec(backend=backend, weights=weights, tags=fixed_tags, top_k=settings.top_k, device=device, resample=resample)


# calibration.tag_rule: (tagger, detector, config, (box, text) thresholds, fallback tags) -> the tagging stage
TAG_RULES: Registry[Callable[..., object]] = Registry("tag rule")
TAG_RULES.register("tagger")(lambda tagger, detector, config, thresholds, fallback: TagStage(tagger))
TAG_RULES.register("top1-detected")(
    lambda tagger, detector, config, thresholds, fallback: TopOneTagStage(
        tagger, detector, *thresholds, config.filtering.nms_iou, tuple(fallback), config.detection.phrase_rule)
)


@dataclass
class Preprocessor:
    """Builds and runs the preprocessing graph for one category."""

    config: Config
    detector: Detector
    device: str = "cpu"
    note: Callable[[str], None] = lambda message: print(message, file=sys.stderr)

    def graph(self, kind: str, category: str | None, ablate: Sequence[str] = ()) -> StageGraph:
        """The recipe's preprocessing graph: tagging, S_threshold (calibrated size rule only), LLM, P_final."""
        config, settings = self.config, self.config.calibration
        box_threshold, text_threshold = THRESHOLD_RULES.get(settings.thresholds)(config, kind)
        tagger_spec = resolve_tagger_spec(config, category, self.device, self.note)
        llm_spec = LLMSpec(settings.llm, settings.llm_model, settings.llm_url, self.device, settings.llm_timeout)
        options = GenerationOptions(settings.llm_temperature, settings.llm_top_p, settings.llm_max_new_tokens, settings.llm_seed)
        cache = Path(settings.cache_dir) if settings.cache_dir else DEFAULT_CACHE_DIR
        tokenizer = getattr(getattr(self.detector, "processor", None), "tokenizer", None)
        count_tokens = (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])) if tokenizer else None
        official = settings.prompt_style == "official"
        stages = []
        if "tagging" not in ablate:
            build_tagging = TAG_RULES.get(settings.tag_rule)  # unknown names fail before the tagger loads
            tagger = TAGGERS.get(tagger_spec.backend)(tagger_spec)
            stages.append(build_tagging(tagger, self.detector, config, (box_threshold, text_threshold), tagger_spec.tags))
        if config.filtering.size_rule == "calibrated":  # the per-image rule measures the object on each test image
            stages.append(SizeThresholdStage(self.detector, box_threshold, text_threshold, settings.size_cap))
        if "llm" not in ablate:
            llm = load_llm(llm_spec, cache)
            cleaning = settings.answer_cleaning
            if official:
                stages.append(OfficialLlmStage(llm, OfficialMessages.load(), options, cleaning, settings.add_fixed_prompts))
            else:
                stages.append(LlmPromptStage(llm, load_template(settings.template), options, cleaning, settings.add_fixed_prompts))
        # official cleaning puts "abnormal"/"defect" inside the cleaned answer (clean_string): none in front then
        in_answer = settings.answer_cleaning == "official" and "llm" not in ablate
        fixed = FIXED_PROMPTS if settings.add_fixed_prompts and not in_answer else ()
        max_tokens = NO_CUT if official else config.detection.max_text_tokens
        stages.append(FinalPromptStage(count_tokens, max_tokens, fixed))
        return StageGraph(stages, provided=PREPROCESS_INPUTS)

    def calibrate(
        self,
        normal: ImageSource,
        anomalous: ImageSource | None = None,
        category: str | None = None,
        kind: str | None = None,
        ablate: Sequence[str] = (),
    ) -> Calibration:
        """Run steps 1-1 to 1-3 and return the Calibration."""
        unknown = sorted(set(ablate) - set(PREPROCESS_ABLATIONS))
        if unknown:
            raise ConfigError(f"cannot ablate {unknown[0]!r} in preprocessing (choose from {', '.join(PREPROCESS_ABLATIONS)})")
        kind = kind or kind_of(category)
        if kind not in KIND_THRESHOLDS:
            raise ConfigError(f"kind must be object or texture, got {kind!r}")
        settings = self.config.calibration
        chosen = select_images(image_paths(normal), settings.n_images, settings.seed)
        sized = select_images(image_paths(anomalous), settings.n_images, settings.seed) if anomalous is not None else chosen
        load = lambda path: load_image(path, self.config.max_image_pixels, parse_window(self.config.bit_window)).pixels  # noqa: E731
        normal_pixels = [load(p) for p in chosen]
        size_pixels = normal_pixels if sized == chosen else [load(p) for p in sized]
        graph = self.graph(kind, category, ablate)
        run = graph.run(
            {
                "normal_images": normal_pixels,
                "calibration_images": size_pixels,
                "tags": (),
                "p_adj": (),
                "llm_answer": "",
                "size_threshold": settings.size_cap,
                "object_size": None,
            }
        )
        context = run.context
        models = {"detector": getattr(self.detector, "model_id", type(self.detector).__name__)}
        template: dict[str, str] = {}
        for stage in graph.stages:
            if isinstance(stage, TagStage):
                models["tagger"] = stage.tagger.model_id
            if isinstance(stage, TopOneTagStage):
                models["tagger"] = stage.tagger.model_id
            if isinstance(stage, LlmPromptStage):
                models["llm"] = stage.llm.model_id
                template = {"name": stage.template.name, "sha256": stage.template.sha256}
            if isinstance(stage, OfficialLlmStage):
                models["llm"] = stage.llm.model_id
                template = {"name": f"official-messages-v{stage.messages.version}", "sha256": stage.messages.sha256}
        box_threshold, text_threshold = THRESHOLD_RULES.get(settings.thresholds)(self.config, kind)
        return Calibration(
            tags=tuple(context["tags"]),
            llm_answer=context["llm_answer"],
            p_adj=tuple(context["p_adj"]),
            p_final=tuple(context["prompts"]),
            size_threshold=float(context["size_threshold"]),
            object_size=context["object_size"],
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            kind=kind,
            category=category or "",
            seed=settings.seed,
            normal_images=tuple(str(p) for p in chosen),
            calibration_images=tuple(str(p) for p in sized),
            models=models,
            template=template,
            ablated=tuple(sorted(ablate)),
            recipe=self.config.recipe,
        )
