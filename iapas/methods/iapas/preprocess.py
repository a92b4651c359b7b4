"""Preprocessing (steps 1-1 to 1-3) as a stage graph that produces a Calibration."""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ...backends.base import Detector
from ...backends.llm import LLMSpec, load_llm
from ...backends.taggers import TAGGERS, TaggerSpec
from ...calibration import Calibration
from ...config import KIND_THRESHOLDS, Config, kind_of
from ...errors import ConfigError, InputImageError
from ...graph import StageGraph
from ...images import find_images, load_image, parse_window
from .prompting import load_template
from ...stages.calibration import SizeThresholdStage
from ...stages.prompting import FinalPromptStage, LlmPromptStage
from ...stages.tagging import TagStage
from ...weights import chosen_or_found

PREPROCESS_INPUTS = ("normal_images", "calibration_images", "tags", "p_adj", "llm_answer", "size_threshold", "object_size")
PREPROCESS_ABLATIONS = ("tagging", "llm")  # steps 1-1 and 1-3 can be switched off; their stages bear these names
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "iapas" / "llm"
ImageSource = str | Path | Sequence[str | Path]  # a folder of images, or a list of image files


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
    return TaggerSpec(backend=backend, weights=weights, tags=fixed_tags, top_k=settings.top_k, device=device)


@dataclass
class Preprocessor:
    """Builds and runs the preprocessing graph for one category."""

    config: Config
    detector: Detector
    device: str = "cpu"
    note: Callable[[str], None] = lambda message: print(message, file=sys.stderr)

    def graph(self, kind: str, category: str | None, ablate: Sequence[str] = ()) -> StageGraph:
        settings = self.config.calibration
        threshold = KIND_THRESHOLDS[kind]
        tagger_spec = resolve_tagger_spec(self.config, category, self.device, self.note)
        llm_spec = LLMSpec(settings.llm, settings.llm_model, settings.llm_url, self.device)
        cache = Path(settings.cache_dir) if settings.cache_dir else DEFAULT_CACHE_DIR
        tokenizer = getattr(getattr(self.detector, "processor", None), "tokenizer", None)
        count_tokens = (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])) if tokenizer else None
        stages = []
        if "tagging" not in ablate:
            stages.append(TagStage(TAGGERS.get(tagger_spec.backend)(tagger_spec)))
        stages.append(SizeThresholdStage(self.detector, threshold, threshold, settings.size_cap))
        if "llm" not in ablate:
            stages.append(LlmPromptStage(load_llm(llm_spec, cache), load_template(settings.template)))
        stages.append(FinalPromptStage(count_tokens, self.config.detection.max_text_tokens))
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
            if isinstance(stage, LlmPromptStage):
                models["llm"] = stage.llm.model_id
                template = {"name": stage.template.name, "sha256": stage.template.sha256}
        threshold = KIND_THRESHOLDS[kind]
        return Calibration(
            tags=tuple(context["tags"]),
            llm_answer=context["llm_answer"],
            p_adj=tuple(context["p_adj"]),
            p_final=tuple(context["prompts"]),
            size_threshold=float(context["size_threshold"]),
            object_size=context["object_size"],
            box_threshold=threshold,
            text_threshold=threshold,
            kind=kind,
            category=category or "",
            seed=settings.seed,
            normal_images=tuple(str(p) for p in chosen),
            calibration_images=tuple(str(p) for p in sized),
            models=models,
            template=template,
            ablated=tuple(sorted(ablate)),
        )
