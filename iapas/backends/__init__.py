"""Model loaders, one module per model family, reached through registries."""
from .base import DETECTORS, SEGMENTERS, Detector, Segmenter, load_detector, load_segmenter
from . import grounding_dino, omdet, sam, sam2, sam3  # noqa: F401  (registers the backends)

__all__ = ["DETECTORS", "SEGMENTERS", "Detector", "Segmenter", "load_detector", "load_segmenter"]
