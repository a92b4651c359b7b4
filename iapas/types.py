"""Frozen value types that flow between stages."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError


def _frozen_array(values: np.ndarray, dtype: type, ndim: int, name: str) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=dtype)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class Boxes:
    """Detected regions in pixel coordinates of the input image.

    xyxy: (N, 4) float32, x0 y0 x1 y1; scores: (N,) float32 in [0, 1];
    phrases: N phrases, the caption tokens above the text threshold of each box ("" when none passed it).
    """

    xyxy: np.ndarray
    scores: np.ndarray
    phrases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        object.__setattr__(self, "xyxy", _frozen_array(xyxy, np.float32, 2, "xyxy"))
        object.__setattr__(self, "scores", _frozen_array(self.scores, np.float32, 1, "scores"))
        phrases = tuple(self.phrases) if self.phrases else ("",) * len(self.scores)
        object.__setattr__(self, "phrases", phrases)
        if not (len(self.xyxy) == len(self.scores) == len(self.phrases)):
            raise ValueError("xyxy, scores and phrases must have the same length")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Boxes":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())

    def areas(self) -> np.ndarray:
        """(N,) float32 box areas in pixels."""
        width = np.clip(self.xyxy[:, 2] - self.xyxy[:, 0], 0, None)
        height = np.clip(self.xyxy[:, 3] - self.xyxy[:, 1], 0, None)
        return width * height

    def area_ratios(self, image_height: int, image_width: int) -> np.ndarray:
        """(N,) float64 box area over image area: the measure both S_threshold and the size filter use."""
        return self.areas().astype(np.float64) / (image_height * image_width)

    def clamped(self, image_height: int, image_width: int) -> "Boxes":
        """The boxes cut to the image: x in [0, width], y in [0, height] (the official code's clamp before SAM)."""
        xyxy = self.xyxy.copy()
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, image_width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, image_height)
        return Boxes(xyxy, self.scores, self.phrases)

    def top(self, count: int) -> "Boxes":
        """The `count` highest-scoring boxes in descending score order (ties by index); all of them when count is 0."""
        if count <= 0 or len(self) <= count:
            return self
        return self.select(np.argsort(-self.scores, kind="stable")[:count])

    def select(self, keep: np.ndarray) -> "Boxes":
        """The boxes at the integer indices or boolean mask `keep`, in that order."""
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        return Boxes(self.xyxy[index], self.scores[index], tuple(self.phrases[i] for i in index))


@dataclass(frozen=True)
class Masks:
    """Binary masks, one per box: data is (N, H, W) bool at the input resolution.

    regions: optional (N, 4) int64 x0 y0 x1 y1, half-open, a rectangle holding every True pixel of each mask
    ((0, 0, 0, 0) for an empty one); SAM's region-only post-processing gives it, so per-mask work
    (scoring) touches only those pixels. None when unknown; `bounding_regions` then computes it.
    """

    data: np.ndarray
    regions: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _frozen_array(self.data, bool, 3, "mask data"))
        if self.regions is not None:
            regions = _frozen_array(np.asarray(self.regions).reshape(-1, 4), np.int64, 2, "regions")
            if len(regions) != len(self.data):
                raise ValueError(f"{len(regions)} regions for {len(self.data)} masks")
            object.__setattr__(self, "regions", regions)

    def __len__(self) -> int:
        return self.data.shape[0]

    @classmethod
    def empty(cls, height: int, width: int) -> "Masks":
        return cls(np.zeros((0, height, width), bool), np.zeros((0, 4), np.int64))

    def areas(self) -> np.ndarray:
        """(N,) int64 pixel count of each mask."""
        return self.data.sum(axis=(1, 2), dtype=np.int64)

    def bounding_regions(self) -> np.ndarray:
        """(N, 4) int64 x0 y0 x1 y1 (half-open) holding each mask's True pixels: `regions` when known, else measured."""
        if self.regions is not None:
            return self.regions
        rows, cols = self.data.any(axis=2), self.data.any(axis=1)
        regions = np.zeros((len(self), 4), np.int64)
        present = rows.any(axis=1)
        height, width = self.data.shape[1:]
        regions[present, 0] = cols[present].argmax(axis=1)
        regions[present, 1] = rows[present].argmax(axis=1)
        regions[present, 2] = width - cols[present, ::-1].argmax(axis=1)
        regions[present, 3] = height - rows[present, ::-1].argmax(axis=1)
        return regions


def map_max_score(anomaly_map: np.ndarray) -> float:
    """The image score of the paper's evaluation: the map's maximum (0 for an empty map). The one place it is computed."""
    return float(anomaly_map.max()) if anomaly_map.size else 0.0


IMAGE_SCORE_RULES = ("max", "method")


@dataclass(frozen=True)
class Result:
    """Everything one segmentation produced for one image.

    anomaly_map: (H, W) float32 in [0, 1] at the input resolution; boxes and masks: the kept
    regions; prompts: the text prompts used; timings: seconds per stage, in run order.
    IAP-AS's size filter: object_tags, the tags asked for the object; object_box, the (1,) Boxes of the
    object found on this image (as predicted, or cut to the image under the iapas recipe; None when none
    was asked for or found); object_size, its area over the image's; size_limit, the area ratio below
    which a box was kept (None where no size filter ran).
    """

    anomaly_map: np.ndarray
    boxes: Boxes
    masks: Masks
    prompts: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)
    method: str = "iapas"
    image_score_value: float | None = None
    object_tags: tuple[str, ...] = ()
    object_box: Boxes | None = None
    object_size: float | None = None
    size_limit: float | None = None

    @property
    def image_score(self) -> float:
        """Image-level anomaly score: the method's own, else the maximum of the map."""
        if self.image_score_value is not None:
            return float(self.image_score_value)
        return map_max_score(self.anomaly_map)

    def score(self, rule: str) -> float:
        """The image score under a named rule of IMAGE_SCORE_RULES ("max": the map's maximum; "method": the method's own)."""
        if rule not in IMAGE_SCORE_RULES:
            raise ConfigError(f"unknown image-score rule {rule!r} (choose from {', '.join(IMAGE_SCORE_RULES)})")
        return map_max_score(self.anomaly_map) if rule == "max" else self.image_score

    @property
    def height(self) -> int:
        return int(self.anomaly_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.anomaly_map.shape[1])


def all_results(outcomes: "list[Result | Exception]") -> "list[Result]":
    """The Results of a batch's outcomes (each image's Result or exception, in order), raising the first failure."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return outcomes  # type: ignore[return-value]
