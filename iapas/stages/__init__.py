"""Pipeline stages, one module per kind; each is a plain class with a typed `run`."""
from .detection import DetectStage
from .filtering import NmsStage, SizeFilterStage, nms, filter_by_size
from .masking import MaskStage
from .scoring import ScoreStage, anomaly_map

__all__ = ["DetectStage", "NmsStage", "SizeFilterStage", "MaskStage", "ScoreStage", "nms", "filter_by_size", "anomaly_map"]
