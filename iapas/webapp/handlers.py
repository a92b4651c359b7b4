"""What the web app does, without Gradio: load models once, segment one image, calibrate a folder.

Kept free of Gradio so the same functions are tested directly and by the browser test.
"""
from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..calibration import Calibration, load_calibration
from ..config import Config
from ..errors import ConfigError, IapasError
from ..files import atomic_write
from ..methods import METHODS
from ..runs.outputs import result_record, write_result
from ..types import Result
from ..visualization.overlays import heatmap, result_overlay

Progress = Callable[[float, str], None]

# learned CLIP methods -> the config key naming their trained prompts
CHECKPOINT_KEYS = {"anomalyclip": "clip_methods.prompts", "faprompt": "clip_methods.prompts",
                   "adaclip": "clip_methods.adaclip_prompts", "genclip": "clip_methods.genclip_prompts"}


def download_name(name: str | None) -> str:
    """The stem result files are named after: the input image's file name (suffix kept), else "result"."""
    base = Path(str(name or "")).name
    return base if base and base not in (".", "..") else "result"


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
    # the overlay and heat map as files of that folder, which the page shows: handing Gradio arrays makes it
    # write them to a path named by their content, in place, so two requests with the same picture rewrite
    # the file while a browser reads it (RemoteProtocolError); a file is copied by rename, atomically
    overlay_file: str = ""
    heat_file: str = ""


@dataclass
class ResultFolders:
    """The per-request folders of result files, bounded: at most `keep` of them, none older than `max_age_s`.

    Gradio copies a response's files into its own cache when the response is sent (and `build_app` bounds
    that cache too), so an older folder can go as soon as newer requests arrive.
    """

    root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    keep: int = 16
    max_age_s: float = 3600.0
    _made: "deque[Path]" = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self, prefix: str = "iapas-result-") -> Path:
        """A fresh folder; the oldest of this app's folders beyond the bounds are removed first."""
        import shutil
        import time

        with self._lock:
            now = time.time()
            while self._made and (len(self._made) >= self.keep or _age(self._made[0], now) > self.max_age_s):
                shutil.rmtree(self._made.popleft(), ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
            self._made.append(folder)
            return folder

    def clear(self) -> None:
        """Remove every folder this app made (when the server stops)."""
        import shutil

        with self._lock:
            while self._made:
                shutil.rmtree(self._made.popleft(), ignore_errors=True)


def _age(folder: Path, now: float) -> float:
    try:
        return now - folder.stat().st_mtime
    except OSError:  # removed by hand: old enough
        return float("inf")


@dataclass
class ModelCache:
    """Methods loaded once per model-defining setting and kept for later requests (thread-safe, memory-bounded).

    A method is keyed by its name alone: the app's config fixes its weights, and a category only changes
    its text prompts, so every category shares one CLIP (`prepared` re-prepares it under the model's lock).
    At most `max_models` stay loaded; the least recently used goes first.
    """

    config: Config
    max_models: int = 3
    results: ResultFolders = field(default_factory=ResultFolders)  # this app's result folders, bounded
    _loaded: "OrderedDict[tuple, Any]" = field(default_factory=OrderedDict)
    _categories: dict[tuple, str] = field(default_factory=dict)  # the category a method was last prepared for
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def iapas_pipeline(self):
        """The IAP-AS pipeline of this app's config (detector and segmenter load on first use)."""
        from ..methods.iapas.pipeline import Pipeline

        return self._get(("iapas",), lambda: Pipeline.from_config(self.config))

    def clip_method(self, name: str, category: str):
        """A registered comparison method, prepared for `category` (call under `models_in_turn(method)`)."""
        method = self._get((name,), lambda: METHODS.get(name)(self.config, ()))
        if self._categories.get((name,)) != category:
            method.prepare(category, [], "object", self.results.new("iapas-prepare-"))
            self._categories[(name,)] = category
        return method

    def segment_clip(self, name: str, category: str, pixels: np.ndarray) -> Result:
        """Prepare and segment under the method's lock: another request's category never slips in between."""
        from ..device import models_in_turn

        method = self._get((name,), lambda: METHODS.get(name)(self.config, ()))
        with models_in_turn(method):
            return self.clip_method(name, category).segment(pixels)

    def learned_method(self, name: str, category: str, checkpoint: str):
        """A learned CLIP method with the given trained-prompts checkpoint, prepared for `category`
        (call under `models_in_turn(method)`, as `clip_method`)."""
        key = (name, checkpoint)
        method = self._get(key, lambda: self._build_learned(name, checkpoint))
        if self._categories.get(key) != category:
            method.prepare(category, [], "object", self.results.new("iapas-prepare-"))
            self._categories[key] = category
        return method

    def _build_learned(self, name: str, checkpoint: str):
        return METHODS.get(name)(self.config.updated({CHECKPOINT_KEYS[name]: checkpoint}), ())

    def segment_learned(self, name: str, category: str, checkpoint: str, pixels: np.ndarray) -> Result:
        """`segment_clip` for a learned method with a chosen checkpoint."""
        from ..device import models_in_turn

        method = self._get((name, checkpoint), lambda: self._build_learned(name, checkpoint))
        with models_in_turn(method):
            return self.learned_method(name, category, checkpoint).segment(pixels)

    def loaded(self) -> list[tuple]:
        """The keys of the models loaded now (for the page's status line and for tests)."""
        return list(self._loaded)

    def _get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._loaded:
                while len(self._loaded) >= max(1, self.max_models):
                    dropped, _ = self._loaded.popitem(last=False)  # its memory goes with the last request using it
                    self._categories.pop(dropped, None)
                self._loaded[key] = build()
            self._loaded.move_to_end(key)
            return self._loaded[key]


def read_upload(cache: ModelCache, image: "str | Path | np.ndarray | None") -> np.ndarray:
    """An uploaded image as (H, W, 3) uint8 by the CLI's rules: a file through iapas's loader (bit depth, EXIF,
    modes, the pixel limit, one-line errors for text, empty or forged files), an array through as_rgb_array."""
    from ..images import load_image, parse_window
    from ..methods.iapas.pipeline import as_rgb_array

    if image is None or (isinstance(image, str) and not image):
        raise IapasError("no image: upload one or pick an example")
    window = parse_window(cache.config.bit_window)
    if isinstance(image, (str, Path)):
        return load_image(image, cache.config.max_image_pixels, window).pixels
    return as_rgb_array(image, cache.config.max_image_pixels, window)


def check_threshold(name: str, value: float | None) -> float | None:
    """A threshold in [0, 1], or a one-line ConfigError."""
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")
    return value


def segment_request(cache: ModelCache, image: "str | Path | np.ndarray | None", request: SegmentRequest,
                    progress: Progress = lambda fraction, message: None) -> SegmentResponse:
    """Segment one image (an uploaded file's path, or pixels) as the request says, write its result files, and
    build what the page shows."""
    if request.method not in METHODS:
        raise ConfigError(f"unknown method {request.method!r} (known: {', '.join(METHODS.names())})")
    pixels = read_upload(cache, image)
    thresholds = {name: check_threshold(name.replace("_", " "), getattr(request, name))
                  for name in ("box_threshold", "text_threshold", "size_threshold")}
    progress(0.1, f"loading {request.method}")
    if request.method == "iapas":
        result = _segment_iapas(cache, pixels, request, thresholds, progress)
    else:
        if request.prompts or request.calibration_path:
            raise IapasError(f"prompts and calibration files only apply to iapas, not {request.method}")
        category = request.category.strip() or "object"
        if request.checkpoint and request.method not in CHECKPOINT_KEYS:
            raise IapasError(f"a checkpoint only applies to the learned methods ({', '.join(CHECKPOINT_KEYS)}), "
                             f"not {request.method}")
        progress(0.5, "segmenting")
        result = (cache.segment_learned(request.method, category, request.checkpoint, pixels) if request.checkpoint
                  else cache.segment_clip(request.method, category, pixels))
    progress(0.9, "writing result files")
    out_dir = cache.results.new()
    name = download_name(request.name)
    paths = write_result(out_dir, name, pixels, Path(request.name or "upload.png"), result, {"source": "iapas serve"})
    record = result_record(result, Path(request.name or "upload.png"))
    boxes = [[b["phrase"], b["score"], *b["xyxy"], b["mask_area"]] for b in record["boxes"]]
    timings = [[stage, round(seconds * 1000, 2)] for stage, seconds in result.timings.items()]
    heat = heatmap(result.anomaly_map)
    heat_file = atomic_write(out_dir / f"{name}_heat.png", lambda temporary: Image.fromarray(heat).save(temporary, format="PNG"))
    return SegmentResponse(result, result_overlay(pixels, result.anomaly_map, result.boxes), heat,
                           boxes, timings, [str(path) for path in paths.values()], str(paths["_overlay.png"]), str(heat_file))


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
    """Calibrate a category from a server-side folder of normal images; returns it and its saved file.

    `n_images` None means the config's count; any number given must be a whole number of at least 1
    (0 is refused, not silently replaced by the default).
    """
    from ..config import at_least_one

    if not folder or not Path(folder).is_dir():
        raise IapasError(f"not a folder of normal images: {folder or '(empty)'}")
    if n_images is not None:
        if isinstance(n_images, float) and n_images.is_integer():
            n_images = int(n_images)  # gr.Number hands floats over
        at_least_one(n_images, "number of images")
    pipeline = cache.iapas_pipeline()
    if n_images is not None:
        from ..methods.iapas.pipeline import Pipeline

        pipeline = Pipeline(cache.config.updated({"calibration.n_images": int(n_images)}), pipeline.detector,
                            pipeline.segmenter)
    progress(0.2, "calibrating (tagging, size threshold, LLM prompts)")
    calibration = pipeline.calibrate(folder, category=category.strip() or None)
    path = cache.results.new("iapas-calibration-") / f"{category.strip() or 'calibration'}.json"
    calibration.save(path)
    return calibration, str(path)

