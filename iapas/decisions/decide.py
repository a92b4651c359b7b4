"""One image's decision: verdict, image score, binary defect mask and defect regions.

The rules, in order:
- the region of interest (when given) is where the map counts: outside it scores are set to 0 and the
  image score is the map's maximum inside it;
- the binary mask is the map above the pixel threshold (or MEBin's mask, per folder), inside the
  ROI, without 8-connected regions smaller than the minimum defect area;
- with an image threshold the image is anomalous when its score is above it (and, when a minimum
  defect area is set, at least one region of that size remains); with only a pixel decision it is
  anomalous when a region remains; with neither it is "undecided".
A pixel threshold defaults to the image threshold when only the latter is given.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import DecisionError
from ..types import Boxes, Result
from .regions import Region, defect_regions, min_area_pixels

VERDICTS = ("anomalous", "normal", "undecided")
BINARIZATIONS = ("threshold", "mebin")


@dataclass(frozen=True)
class DecisionSettings:
    """How a run decides (JSON-ready, so it travels in the result record to any engine's writer)."""

    image_threshold: float | None = None
    pixel_threshold: float | None = None
    image_source: str = ""  # "manual", "normal-images", "f1-optimal", with the file it came from
    pixel_source: str = ""
    binarize: str = "threshold"  # threshold | mebin (per folder, after the folder's maps exist)
    min_defect_area: float = 0.0  # pixels when 1 or more, else a fraction of the image
    roi: str = ""  # PNG path; non-zero pixels are inspected
    roi_sha256: str = ""
    thresholds_file: str = ""
    thresholds_file_sha256: str = ""

    def __post_init__(self) -> None:
        if self.binarize not in BINARIZATIONS:
            raise DecisionError(f"--binarize must be one of {', '.join(BINARIZATIONS)}, got {self.binarize!r}")
        if self.image_threshold is not None and self.pixel_threshold is None and self.binarize == "threshold":
            object.__setattr__(self, "pixel_threshold", self.image_threshold)
            object.__setattr__(self, "pixel_source", f"{self.image_source} (the image threshold)")

    @property
    def active(self) -> bool:
        """Whether anything is decided (else the run's results are plain maps, as before)."""
        return (self.image_threshold is not None or self.pixel_threshold is not None or self.binarize == "mebin"
                or bool(self.roi) or self.min_defect_area > 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecisionSettings":
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})

    def with_pixel_threshold(self, value: float, source: str) -> "DecisionSettings":
        return replace(self, pixel_threshold=value, pixel_source=source)


@dataclass(frozen=True)
class Decision:
    """What was decided about one image. mask: (H, W) bool, the kept defect regions."""

    verdict: str
    image_score: float
    mask: np.ndarray | None  # None when there was no pixel decision
    regions: list[Region] = field(default_factory=list)
    pixel_threshold: float | None = None

    @property
    def defect_area_px(self) -> int:
        return int(sum(r.area_px for r in self.regions))

    def record(self, settings: DecisionSettings) -> dict[str, Any]:
        """The JSON fields of the decision (beside the result's own)."""
        size = self.mask.size if self.mask is not None else 0
        return {
            "verdict": self.verdict,
            "image_score": float(self.image_score),  # full precision, as result_record writes it
            "thresholds": {
                "image": settings.image_threshold, "image_source": settings.image_source or None,
                "pixel": self.pixel_threshold, "pixel_source": settings.pixel_source or None,
                "binarize": settings.binarize, "file": settings.thresholds_file or None,
            },
            "min_defect_area": settings.min_defect_area,
            "roi": {"path": settings.roi, "sha256": settings.roi_sha256} if settings.roi else None,
            "defect_area_px": self.defect_area_px,
            "defect_area_fraction": round(self.defect_area_px / size, 6) if size else 0.0,
            "regions": [region.to_dict() for region in self.regions],
        }


def masked_map(anomaly_map: np.ndarray, roi: np.ndarray | None) -> np.ndarray:
    """The map with scores outside the region of interest set to 0."""
    return anomaly_map if roi is None else np.where(roi, anomaly_map, np.float32(0))


def decide(result: Result, settings: DecisionSettings, roi: np.ndarray | None = None,
           binary: np.ndarray | None = None) -> Decision:
    """Decide one image from its Result; `binary` is its MEBin mask when the run binarises with MEBin."""
    return decide_map(result.anomaly_map, result.image_score if roi is None else None, settings, roi, binary, result.boxes)


def decide_map(anomaly_map: np.ndarray, image_score: float | None, settings: DecisionSettings,
               roi: np.ndarray | None = None, binary: np.ndarray | None = None, boxes: Boxes | None = None) -> Decision:
    """decide() on a bare map; `image_score` None means the map's maximum (inside the ROI)."""
    values = masked_map(np.asarray(anomaly_map, np.float32), roi)
    score = float(values.max()) if image_score is None else float(image_score)
    threshold = settings.pixel_threshold
    if binary is None and threshold is not None:
        binary = values > threshold
    mask, regions = None, []
    if binary is not None:
        binary = np.asarray(binary, bool) if roi is None else np.asarray(binary, bool) & roi
        least = min_area_pixels(settings.min_defect_area, *values.shape)
        mask, regions = defect_regions(binary, values, least, boxes)
    if settings.image_threshold is not None:
        anomalous = score > settings.image_threshold and (settings.min_defect_area <= 0 or mask is None or bool(regions))
        verdict = "anomalous" if anomalous else "normal"
    elif mask is not None:
        verdict = "anomalous" if regions else "normal"
    else:
        verdict = "undecided"
    return Decision(verdict, score, mask, regions, threshold)
