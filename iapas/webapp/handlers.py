"""What the web app does, without Gradio: load models once, segment one image, calibrate a folder.

Kept free of Gradio so the same functions are tested directly and by the browser test.
"""
from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..calibration import Calibration, load_calibration
from ..config import Config
from ..errors import ConfigError, IapasError
from ..methods import METHODS
from ..runs.outputs import result_record, write_result
from ..types import Result
from ..visualization.overlays import heatmap, result_overlay

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class SegmentRequest:
    """One segmentation asked for in the web app; empty strings and None mean "the default"."""

    method: str = "iapas"
    prompts: str = ""  # comma-separated, IAP-AS only
    calibration_path: str = ""  # a calibration JSON, IAP-AS only
    category: str = ""  # class name for the CLIP methods
    box_threshold: float | None = None
    text_threshold: float | None = None
    size_threshold: float | None = None
    checkpoint: str = ""  # a learned CLIP method's trained prompts (from the weights folder or uploaded); "" for its default
    name: str = ""  # the input image's file name: result downloads are named after it ("result" when unknown)

    def prompt_list(self) -> list[str]:
        return [p.strip() for p in self.prompts.split(",") if p.strip()]


@dataclass
class SegmentResponse:
    """Everything the Segment tab shows for one image."""

    result: Result
    overlay: np.ndarray  # (H, W, 3) uint8
    heat: np.ndarray  # (H, W, 3) uint8 jet colouring of the map
    boxes_table: list[list[Any]]  # phrase, score, x0, y0, x1, y1, mask area
    timings_table: list[list[Any]]  # stage, milliseconds
    files: list[str]  # .npy, _map.png, _overlay.png, .json in a per-request folder


@dataclass
class ModelCache:
    """Methods loaded once per model-defining setting and kept for later requests (thread-safe)."""

    config: Config
    _loaded: dict[tuple, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def iapas_pipeline(self):
        """The IAP-AS pipeline of this app's config (detector and segmenter load on first use)."""
        from ..methods.iapas.pipeline import Pipeline

        return self._get(("iapas",), lambda: Pipeline.from_config(self.config))

    def clip_method(self, name: str, category: str):
        """A registered comparison method, prepared for `category`."""
        def build():
            method = METHODS.get(name)(self.config, ())
            method.prepare(category, [], "object", Path(tempfile.mkdtemp(prefix="iapas-serve-")))
            return method

        return self._get((name, category), build)

    def learned_method(self, name: str, category: str, checkpoint: str):
        """A learned CLIP method with the given trained-prompts checkpoint, prepared for `category`."""
        from .decisions import CHECKPOINT_KEYS

        def build():
            config = self.config.updated({CHECKPOINT_KEYS[name]: checkpoint})
            method = METHODS.get(name)(config, ())
            method.prepare(category, [], "object", Path(tempfile.mkdtemp(prefix="iapas-serve-")))
            return method

        return self._get((name, category, checkpoint), build)

    def loaded(self) -> list[tuple]:
        """The keys of the models loaded so far (for the page's status line and for tests)."""
        return list(self._loaded)

    def _get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = build()
            return self._loaded[key]


def check_threshold(name: str, value: float | None) -> float | None:
    """A threshold in [0, 1], or a one-line ConfigError."""
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")
    return value


def segment_request(cache: ModelCache, pixels: np.ndarray | None, request: SegmentRequest,
                    progress: Progress = lambda fraction, message: None) -> SegmentResponse:
    """Segment one image as the request says, write its result files, and build what the page shows."""
    from ..methods.iapas.pipeline import as_rgb_array

    if pixels is None:
        raise IapasError("no image: upload one or pick an example")
    if request.method not in METHODS:
        raise ConfigError(f"unknown method {request.method!r} (known: {', '.join(METHODS.names())})")
    pixels = as_rgb_array(pixels, cache.config.max_image_pixels)
    thresholds = {name: check_threshold(name.replace("_", " "), getattr(request, name))
                  for name in ("box_threshold", "text_threshold", "size_threshold")}
    progress(0.1, f"loading {request.method}")
    if request.method == "iapas":
        result = _segment_iapas(cache, pixels, request, thresholds, progress)
    else:
        if request.prompts or request.calibration_path:
            raise IapasError(f"prompts and calibration files only apply to iapas, not {request.method}")
        category = request.category.strip() or "object"
        from .decisions import CHECKPOINT_KEYS

        if request.checkpoint and request.method not in CHECKPOINT_KEYS:
            raise IapasError(f"a checkpoint only applies to the learned methods ({', '.join(CHECKPOINT_KEYS)}), "
                             f"not {request.method}")
        method = (cache.learned_method(request.method, category, request.checkpoint) if request.checkpoint
                  else cache.clip_method(request.method, category))
        progress(0.5, "segmenting")
        result = method.segment(pixels)
    progress(0.9, "writing result files")
    out_dir = Path(tempfile.mkdtemp(prefix="iapas-result-"))
    from .decisions import download_name

    name = download_name(request.name)
    paths = write_result(out_dir, name, pixels, Path(request.name or "upload.png"), result, {"source": "iapas serve"})
    record = result_record(result, Path(request.name or "upload.png"))
    boxes = [[b["phrase"], b["score"], *b["xyxy"], b["mask_area"]] for b in record["boxes"]]
    timings = [[stage, round(seconds * 1000, 2)] for stage, seconds in result.timings.items()]
    return SegmentResponse(result, result_overlay(pixels, result.anomaly_map, result.boxes), heatmap(result.anomaly_map),
                           boxes, timings, [str(path) for path in paths.values()])


def _segment_iapas(cache: ModelCache, pixels: np.ndarray, request: SegmentRequest, thresholds: dict[str, float | None],
                   progress: Progress) -> Result:
    """IAP-AS with the request's prompts or calibration; thresholds given on the page take precedence."""
    from ..methods.iapas.pipeline import Pipeline

    loaded = cache.iapas_pipeline()
    overrides = {"detection.box_threshold": thresholds["box_threshold"],
                 "detection.text_threshold": thresholds["text_threshold"],
                 "filtering.size_threshold": thresholds["size_threshold"]}
    pipeline = Pipeline(cache.config.updated(overrides), loaded.detector, loaded.segmenter)  # models shared, not reloaded
    calibration: Calibration | None = None
    if request.calibration_path:
        calibration = load_calibration(request.calibration_path)
        calibration = Calibration.from_dict({**calibration.to_dict(), **{
            key: value for key, value in thresholds.items() if value is not None}})
    progress(0.5, "segmenting")
    return pipeline.segment(pixels, prompts=request.prompt_list() or None, calibration=calibration)


def calibrate_folder(cache: ModelCache, folder: str, category: str, n_images: int | None = None,
                     progress: Progress = lambda fraction, message: None) -> tuple[Calibration, str]:
    """Calibrate a category from a server-side folder of normal images; returns it and its saved file."""
    if not folder or not Path(folder).is_dir():
        raise IapasError(f"not a folder of normal images: {folder or '(empty)'}")
    if n_images is not None and int(n_images) < 1:
        raise ConfigError(f"number of images must be at least 1, got {n_images}")
    pipeline = cache.iapas_pipeline()
    if n_images:
        from ..methods.iapas.pipeline import Pipeline

        pipeline = Pipeline(cache.config.updated({"calibration.n_images": int(n_images)}), pipeline.detector,
                            pipeline.segmenter)
    progress(0.2, "calibrating (tagging, size threshold, LLM prompts)")
    calibration = pipeline.calibrate(folder, category=category.strip() or None)
    path = Path(tempfile.mkdtemp(prefix="iapas-calibration-")) / f"{category.strip() or 'calibration'}.json"
    calibration.save(path)
    return calibration, str(path)
