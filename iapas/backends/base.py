"""Backend protocols and the registries that map a backend name to its loader."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from ..errors import CorruptWeightsError, WeightsError
from ..registry import Registry
from ..types import Boxes
from ..weights.manifest import entry_for_path


class Detector(Protocol):
    """Open-set box detector: text prompts (or ready captions) in, scored boxes out."""

    def detect(self, image: np.ndarray, prompts: Sequence[str], box_threshold: float, text_threshold: float) -> Boxes: ...

    def detect_captions(
        self, image: np.ndarray, captions: Sequence[str], box_threshold: float, text_threshold: float, phrase_rule: str = "words"
    ) -> Boxes:
        """Boxes of every caption on one image, the image encoded once."""
        ...

    def fits(self, caption: str) -> bool:
        """Whether a caption fits the detector's text length."""
        ...


class Segmenter(Protocol):
    """Box-prompted segmenter: encodes the image once and decodes all boxes in one batch."""

    def segment_boxes(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """(N, H, W) bool masks for (N, 4) pixel boxes, N >= 1, on an (H, W, 3) uint8 image.

        The masking stage never calls it without boxes, so backends need not handle N == 0.
        """
        ...


DetectorLoader = Callable[..., Detector]  # (path, device, input_size=0): 0 keeps the processor's own image size
SegmenterLoader = Callable[[Path, torch.device], Segmenter]
DETECTORS: Registry[DetectorLoader] = Registry("detector backend")
SEGMENTERS: Registry[SegmenterLoader] = Registry("segmenter backend")

# role -> transformers `model_type` (a directory's config.json) -> the backend that loads it; filled by the
# backend modules, so that backend "auto" picks the loader from the directory itself
MODEL_TYPE_BACKENDS: dict[str, dict[str, str]] = {"detector": {}, "segmenter": {}}
# backend -> the manifest `family` it loads: an explicit backend only finds its own family in the weights dir
BACKEND_FAMILIES: dict[str, str] = {"sam": "sam"}


def register_model_type(role: str, model_type: str, backend: str, family: str) -> None:
    """Say which backend loads a transformers model_type, and which manifest family that backend's weights are."""
    MODEL_TYPE_BACKENDS[role][model_type] = backend
    BACKEND_FAMILIES[backend] = family


def model_type_of(path: Path) -> str:
    """The `model_type` of a Hugging Face-format directory's config.json, "" when there is none to read."""
    config = Path(path) / "config.json"
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, ValueError, AttributeError):  # absent, unreadable or not a JSON object: the loader says why
        return ""


def weights_family(backend: str) -> str:
    """The manifest family an explicit backend loads; "" for auto (any family of the role)."""
    return BACKEND_FAMILIES.get(backend, "")


def is_demo(path: Path) -> bool:
    """Whether a checkpoint is one of the random demo models (a manifest demo entry, or marked as one)."""
    path = Path(path)
    entry = entry_for_path(path)
    marked = (path / "DEMO_WEIGHTS").exists() if path.is_dir() else path.with_name(path.name + ".DEMO_WEIGHTS").exists()
    return (entry is not None and entry.demo) or marked


def warn_if_demo(path: Path) -> None:
    """Say loudly when a checkpoint is one of the random demo models."""
    if is_demo(path):
        print(
            f"WARNING: {path} holds RANDOM WEIGHTS (built by `iapas weights make-demo` or `iapas bench --random-full`); "
            "its output is MEANINGLESS. Put real weights in the weights dir (see weights/README.md).",
            file=sys.stderr,
        )


def require_path(path: Path, what: str, expect_dir: bool) -> None:
    """Raise a one-line WeightsError when a weight file or directory is absent."""
    entry = entry_for_path(path)
    hint = f"; see {entry.where_to_get()}" if entry else "; see `iapas weights list` (iapas/resources/manifest.toml)"
    if not path.exists():
        raise WeightsError(f"{what} weights not found: {path}{hint}")
    if expect_dir and not path.is_dir():
        raise WeightsError(f"{what} weights must be a Hugging Face-format directory, got a file: {path}{hint}")
    if not expect_dir and not path.is_file():
        raise WeightsError(f"{what} weights must be a checkpoint file, got a folder: {path}{hint}")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-file progress bars while iapas loads a model, then restore the caller's setting."""
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")


def load_error(what: str, path: Path, error: BaseException) -> WeightsError:
    """The one-line error for a model that failed to load, naming the damaged weight file when there is one.

    A truncated or damaged safetensors file raises safetensors' own error type (or a RuntimeError
    from torch), not OSError; whatever the type, the user is told which file to replace.
    """
    path = Path(path)
    first_line = (str(error).splitlines() or [type(error).__name__])[0][:200]
    files = [path / name for name in WEIGHT_FILE_NAMES if (path / name).is_file()] if path.is_dir() else [path]
    # safetensors' header errors, and torch's for a damaged pickle or zip archive (pytorch_model.bin)
    damaged = "safetensor" in type(error).__name__.lower() or any(
        marker in first_line.lower() for marker in ("safetensor", "header", "pickl", "load key", "zip archive", "eof"))
    if damaged and files:
        return CorruptWeightsError(f"{what} weight file {files[0]} is corrupt or truncated ({first_line}); replace it")
    return WeightsError(f"cannot load {what} from {path}: {first_line}")


def detector_backend_for(path: Path) -> str:
    """The detector backend a path implies: a directory's model_type (Grounding DINO when unknown), a file is Grounding DINO's .pth."""
    path = Path(path)
    found = MODEL_TYPE_BACKENDS["detector"].get(model_type_of(path)) if path.is_dir() else None
    return found or "hf-grounding-dino"


def load_detector(backend: str, path: Path, device: torch.device, input_size: int = 0) -> Detector:
    """Load a detector; `input_size` > 0 sets the processor's image size (shortest edge), 0 keeps the model's own."""
    path = Path(path)
    if backend == "auto":
        backend = detector_backend_for(path)
    loader = DETECTORS.get(backend)
    warn_if_demo(path)
    with quiet_loading():
        return loader(path, device, input_size=input_size) if input_size else loader(path, device)


def segmenter_backend_for(path: Path) -> str:
    """The segmenter backend a path implies: a directory by its model_type (SamModel when unknown), a file is Meta's .pth."""
    path = Path(path)
    if not path.is_dir():
        return "sam"
    return MODEL_TYPE_BACKENDS["segmenter"].get(model_type_of(path)) or "hf-sam"


def load_segmenter(backend: str, path: Path, device: torch.device) -> Segmenter:
    path = Path(path)
    if backend == "auto":
        backend = segmenter_backend_for(path)
    warn_if_demo(path)
    with quiet_loading():
        return SEGMENTERS.get(backend)(path, device)
