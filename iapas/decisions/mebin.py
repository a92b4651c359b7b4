"""MEBin, Main Element Binarization (AnomalyNCD, Huang et al., CVPR 2025, arXiv 2410.14379).

An adaptive binarisation for when no threshold exists. Read from the paper and from the authors' code
(HUST-SLOW/AnomalyNCD `models/modules/_MEBin.py`, settings in `configs/AnomalyNCD.yaml`); written anew here.

1. The search range comes from a *set* of maps (a folder or a category, as AnomalyNCD binarises each
   product's maps together): from the lowest to the highest per-image peak of the 8-bit maps.
2. Each map is stretched over that range (below the low end: 0; the range onto 0..255), then cut at
   levels 255, 255 - rate, ... down to above 0; after each cut (value > level) a 6x6 erosion removes
   specks and the 8-connected regions are counted.
3. A *stable interval* is a run of at least `min_interval_len` consecutive levels with the same non-zero
   count. The count whose longest run is longest wins (the first met on ties), and among its runs of that
   length the last one; the level at that run's low end, mapped back to the map's own 8-bit scale,
   is the image's threshold. Without any stable interval the image has no defect (empty mask).
4. The map is cut at that threshold (value > threshold) and eroded the same way.

Maps here are [0, 1] floats; they are rounded to 8 bits first (as `<name>_map.png` stores them), which
is what the authors' code reads. One deviation, where the authors' code divides by zero: when every map
of the set has the same peak (one image alone, say), the range is taken from 0 to that peak.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import DecisionError


@dataclass(frozen=True)
class MEBinOutcome:
    """One map's MEBin result: its (H, W) bool mask, its threshold on the [0, 1] map scale (value > threshold), and the count."""

    mask: np.ndarray
    threshold: float
    regions: int


@dataclass(frozen=True)
class MEBin:
    """MEBin's settings, the paper's by default."""

    sample_rate: int = 4  # configs/AnomalyNCD.yaml binarization.sample_rate
    min_interval_len: int = 4  # configs/AnomalyNCD.yaml binarization.min_interval_len
    erode: bool = True  # configs/AnomalyNCD.yaml binarization.erode
    erode_kernel: int = 6  # _MEBin.py bin_and_erode: a 6x6 kernel of ones, one iteration

    def __post_init__(self) -> None:
        if not 1 <= self.sample_rate <= 255 or self.min_interval_len < 1 or self.erode_kernel < 1:
            raise DecisionError(f"MEBin needs a sample rate in 1..255 and positive interval and kernel sizes, got {self}")

    def to_dict(self) -> dict:
        return {"rule": "MEBin (AnomalyNCD, CVPR 2025)", "sample_rate": self.sample_rate,
                "min_interval_len": self.min_interval_len, "erode": self.erode, "erode_kernel": self.erode_kernel}

    def search_range(self, maps8: Sequence[np.ndarray]) -> tuple[int, int]:
        """(low, high): the lowest and highest per-image peak of the set's 8-bit maps."""
        if not maps8:
            raise DecisionError("MEBin needs at least one map to set its search range")
        peaks = [int(m.max()) if m.size else 0 for m in maps8]
        low, high = min(peaks), max(peaks)
        return (0, high) if low == high else (low, high)

    def cut(self, values: np.ndarray, level: float) -> np.ndarray:
        """(H, W) uint8 0/1: values above `level`, eroded."""
        import cv2

        binary = (values > level).astype(np.uint8)
        if self.erode:
            binary = cv2.erode(binary, np.ones((self.erode_kernel, self.erode_kernel), np.uint8), iterations=1)
        return binary

    def counts(self, map8: np.ndarray, low: int, high: int) -> list[int]:
        """The number of 8-connected regions after each cut, from level 255 down by `sample_rate`."""
        import cv2

        values = map8.astype(np.float64)
        stretched = np.where(values < low, 0.0, (values - low) / (high - low) * 255.0)
        sequence = []
        for level in range(255, 0, -self.sample_rate):
            regions, _ = cv2.connectedComponents(self.cut(stretched, level), connectivity=8)
            sequence.append(int(regions) - 1)
        return sequence

    def stable_end(self, sequence: Sequence[int]) -> tuple[int | None, int]:
        """(index of the chosen stable interval's last level, its region count), or (None, 0) without one."""
        runs: list[tuple[int, int, int]] = []  # (count, start, end) of maximal runs long enough
        start = 0
        while start < len(sequence):
            end = start
            while end + 1 < len(sequence) and sequence[end + 1] == sequence[start]:
                end += 1
            if sequence[start] != 0 and end - start + 1 >= self.min_interval_len:
                runs.append((sequence[start], start, end))
            start = end + 1
        if not runs:
            return None, 0
        longest: dict[int, int] = {}
        for count, first, last in runs:  # dict order: the count first met wins ties, as in the authors' code
            longest[count] = max(longest.get(count, -1), last - first)
        chosen = max(longest, key=longest.__getitem__)
        ends = [last for count, first, last in runs if count == chosen and last - first == longest[chosen]]
        return ends[-1], chosen

    def threshold8(self, map8: np.ndarray, low: int, high: int) -> tuple[int, int]:
        """The image's threshold on its own 8-bit scale and the region count of its stable interval (255, 0 without one)."""
        end, count = self.stable_end(self.counts(map8, low, high))
        if end is None:
            return 255, 0
        level = 255 - end * self.sample_rate
        return int(level * (high - low) / 255 + low), count  # truncated, as the authors' code does

    def binarize_one(self, anomaly_map: np.ndarray, low: int, high: int) -> MEBinOutcome:
        """One map of a set whose search range (`search_range` of the set's 8-bit maps, or `range_of_peaks`) is known."""
        map8 = to_8bit(anomaly_map)
        if high == 0:  # every map of the set is zero: nothing stands out anywhere
            return MEBinOutcome(np.zeros(map8.shape, bool), 1.0, 0)
        level, count = self.threshold8(map8, low, high)
        return MEBinOutcome(self.cut(map8, level).astype(bool), level / 255.0, count)

    def binarize(self, maps: Sequence[np.ndarray]) -> list[MEBinOutcome]:
        """Every map of one set (a folder or a category) binarised with the set's search range."""
        low, high = self.search_range([to_8bit(m) for m in maps])
        return [self.binarize_one(m, low, high) for m in maps]


def to_8bit(anomaly_map: np.ndarray) -> np.ndarray:
    """A [0, 1] map as the 8-bit values `<name>_map.png` stores (what MEBin's authors read)."""
    return np.round(np.clip(np.asarray(anomaly_map, np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def range_of_peaks(peaks: Sequence[float]) -> tuple[int, int]:
    """`MEBin.search_range` from the maps' [0, 1] peaks alone (a folder's maps need not be held at once)."""
    return MEBin().search_range([to_8bit(np.array([peak])) for peak in peaks])
