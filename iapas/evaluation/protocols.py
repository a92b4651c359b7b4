"""Evaluation protocols: how a category's maps and masks become its metrics (`iapas eval --protocol`).

- `full` (default): every test image at its own resolution, masks binarised at > 0 (MTD's at 128,
  see `iapas/data/datasets.py`), metrics streamed through histograms (`PixelMetrics`).
- `paper`: how the IAP-AS authors measured Table 1 (github sybeam27/IAP-ZSAS, `test_zsas.py` and
  `utils/function.py`): maps bicubic and masks nearest to 400x400, masks binarised at 128, maps of a
  category min-max normalised together, exact pixel AP, F1-max over 100 thresholds, the official
  choice of test images, the mean of per-category values rounded to 0.01 %.
- `anomalyclip-test`: how zqhang/AnomalyCLIP test.py measures (FAPrompt's and AdaCLIP's test.py alike):
  maps and masks at the 518 px input size, not the image's; masks binarised at > 0, resized with PIL's
  bilinear and kept > 0.5; exact pixel AUROC and AP over the category's pixels.

All three label AUPRO's ground-truth regions 8-connected (`iapas/evaluation/metrics.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..data.datasets import Sample
from ..errors import IapasError, MetricsInputError
from ..files import atomic_write
from ..registry import Registry

# test_zsas.py: --eval_resolution 400, and the evaluation loop resizes to (400, 400) whatever the option says
PAPER_RESOLUTION = 400
# utils/function.py load_image: cv2.threshold(gt, thresh=128, maxval=255, THRESH_BINARY) keeps pixels > 128
PAPER_MASK_THRESHOLD = 128
# utils/function.py calculate_max_f1: thresholds np.linspace(0, 1, 100), pred >= t
PAPER_F1_THRESHOLDS = np.linspace(0, 1, 100)
# test_zsas.py builds its csv from round(value, 2) per category, then the column mean
PAPER_ROUNDING = 2
# zqhang/AnomalyCLIP test.py --image_size 518 (FAPrompt test.py and caoyunkang/AdaCLIP test.py: 518 too): maps and
# masks are measured at the input size
REFERENCE_TEST_SIZE = 518

# Whether the official code evaluates a dataset's normal test images. test_zsas.py skips an image when
# `gt_path is None or (sub_name == 'good' and dataset_name != 'mvtec')`, with the folders and ground-truth
# paths of utils/function.py get_paths / get_image_and_gt_paths:
PAPER_COUNTS_NORMAL = {
    "mvtec": True,   # test/good kept: its gt path is the image itself, read as an all-zero mask
    "visa": True,    # Data/Images/Normal is not named 'good'; gt path = the image, all-zero mask
    "mtd": True,     # MT_Free/Imgs/<n>.png exists (all zero) and MT_Free is not named 'good'
    "ksdd1": True,   # every kosNN/PartK with its (possibly empty) PartK_label
    "mpdd": False,   # test/good skipped by name
    "dtd": False,    # test/good skipped by name
    "btad": False,   # get_paths lists only test/ko
    "dagm": False,   # a normal image has no Label/<n>_label.PNG: gt path None
}


class Scorer(Protocol):
    """Accumulates one category's pixel metrics; its state is saved after every image for resuming."""

    def update(self, anomaly_map: np.ndarray, mask: np.ndarray, name: str = "") -> None: ...
    def summary(self) -> dict[str, float]: ...
    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]: ...
    def state(self) -> dict[str, np.ndarray]: ...
    def restore(self, state: dict[str, np.ndarray]) -> None: ...


@dataclass(frozen=True)
class EvalProtocol:
    """One way of measuring: which images count, how masks are read, how maps become metrics."""

    name: str
    summary: str  # one line, printed in the table header
    folder: str  # sub-folder of the output directory holding its runs ("" for the default protocol)
    mask_threshold: int  # a mask pixel is anomalous when its grey value is above this
    counts: Callable[[str, Sample], bool]  # (dataset name, sample) -> is this test image evaluated
    max_score: Callable[[np.ndarray], float]  # the image score "max of the map" under this protocol
    scorer: Callable[[int, Path], Scorer]  # (histogram bins, folder for held maps) -> a fresh scorer
    mean_rounding: int | None  # per-category values (in %) are rounded to this many decimals before the mean


PROTOCOLS: Registry[EvalProtocol] = Registry("evaluation protocol")


def resize_map(anomaly_map: np.ndarray, size: int = PAPER_RESOLUTION) -> np.ndarray:
    """(size, size) float32 map, cv2 bicubic as utils/function.py process_specify_resolution (on float64)."""
    import cv2

    return cv2.resize(np.asarray(anomaly_map, np.float64), (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)


def resize_mask(mask: np.ndarray, size: int = PAPER_RESOLUTION) -> np.ndarray:
    """(size, size) bool mask, cv2 nearest as utils/function.py process_specify_resolution."""
    import cv2

    return cv2.resize(np.asarray(mask, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


class HeldMaps:
    """The paper protocol's scorer: keeps every resized map and mask of a category until it ends.

    Category normalisation needs the category's min and max, so nothing is final before the last
    image. Each resized map and mask is written to `folder/<index>.npz` (400x400 float32 and bool,
    about 0.8 MB), which is also what a resumed run reads back; the state is only the count.
    """

    def __init__(self, bins: int, folder: Path, size: int = PAPER_RESOLUTION) -> None:
        self.bins, self.folder, self.size = bins, Path(folder), size
        self.held = 0
        self._summary: dict[str, float] | None = None
        self._curve: tuple[np.ndarray, np.ndarray] | None = None

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.npz"

    def update(self, anomaly_map: np.ndarray, mask: np.ndarray, name: str = "") -> None:
        """Add one image: its (H, W) map and (H, W) bool ground truth, resized and written to disk."""
        if anomaly_map.shape != mask.shape:
            raise MetricsInputError(f"map {anomaly_map.shape} and mask {mask.shape} of {name or 'an image'} differ in shape")
        # any finite range is fine: the category is min-max normalised at the end; an inf would turn the whole
        # category into NaN there (saved maps are held to [0, 1] for both protocols: saved_maps.read_map)
        if not np.isfinite(anomaly_map).all():
            raise MetricsInputError(f"anomaly map of {name or 'an image'} holds NaN or inf at "
                                    f"{int((~np.isfinite(anomaly_map)).sum())} pixel(s); metrics cannot rank it")
        resized, resized_mask = self.resized(anomaly_map, mask)
        atomic_write(self._path(self.held), lambda temporary: np.savez(temporary, map=resized, mask=resized_mask))
        self.held += 1
        self._summary = self._curve = None

    def resized(self, anomaly_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The map and mask as this protocol measures them: cv2 bicubic and nearest to size x size (the paper's)."""
        return resize_map(anomaly_map, self.size), resize_mask(mask, self.size)

    def state(self) -> dict[str, np.ndarray]:
        return {"held": np.array(self.held)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        held = int(state["held"])
        missing = [self._path(i).name for i in range(held) if not self._path(i).is_file()]
        if missing:
            raise IapasError(f"{self.folder} lacks held map {missing[0]} of an interrupted category; "
                             f"delete {self.folder} and {self.folder.with_suffix('.npz')} to restart that category")
        self.held = held

    def _load(self, index: int, name: str) -> np.ndarray:
        with np.load(self._path(index)) as data:
            return data[name]

    def _compute(self) -> None:
        from .metrics import PixelMetrics, exact_pixel_metrics

        masks = [self._load(i, "mask") for i in range(self.held)]
        negatives = np.empty(sum(int((~m).sum()) for m in masks), np.float32)
        positives, start = [], 0
        for index, mask in enumerate(masks):
            values = self._load(index, "map")
            positives.append(values[mask])
            normal = values[~mask]
            negatives[start:start + len(normal)] = normal
            start += len(normal)
        positives_all = np.concatenate(positives) if positives else np.empty(0, np.float32)
        low = float(min(negatives.min(initial=np.inf), positives_all.min(initial=np.inf)))
        high = float(max(negatives.max(initial=-np.inf), positives_all.max(initial=-np.inf)))
        summary = exact_pixel_metrics(positives_all, negatives, PAPER_F1_THRESHOLDS)
        del negatives
        # AUPRO (and the plotted PR curve) on the category-normalised maps, through the streaming histograms
        binned = PixelMetrics(bins=self.bins)
        for index, mask in enumerate(masks):
            values = self._load(index, "map").astype(np.float64)
            normalised = (values - low) / (high - low) if high > low else np.zeros_like(values)
            binned.update(normalised, mask)
        summary["pixel_aupro"] = binned.aupro()
        self._summary, self._curve = summary, binned.pr_curve()

    def summary(self) -> dict[str, float]:
        if self._summary is None:
            self._compute()
        return dict(self._summary)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        if self._curve is None:
            self._compute()
        return self._curve


def reference_test_map(anomaly_map: np.ndarray, size: int = REFERENCE_TEST_SIZE) -> np.ndarray:
    """(size, size) float32 map: the image-size map brought back to the input size (bilinear, antialiased)."""
    import torch
    import torch.nn.functional as F

    values = torch.from_numpy(np.asarray(anomaly_map, np.float32))[None, None]
    if values.shape[-2:] == (size, size):
        return values[0, 0].numpy()
    return F.interpolate(values, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def reference_test_mask(mask: np.ndarray, size: int = REFERENCE_TEST_SIZE) -> np.ndarray:
    """(size, size) bool mask as AnomalyCLIP's test.py reads it: the 0/255 mask resized by PIL's bilinear, then > 0.5.

    zqhang/AnomalyCLIP dataset.py makes the 0/255 'L' image; utils.py get_transform's target_transform resizes it
    (torchvision Resize on a PIL image: PIL's bilinear) and ToTensor scales it to [0, 1]; test.py keeps gt > 0.5.
    """
    from PIL import Image

    grey = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return np.asarray(grey) / 255.0 > 0.5


class InputSizeMaps(HeldMaps):
    """The anomalyclip-test protocol's scorer: every map and mask held at the 518 px input size until the category ends."""

    def __init__(self, bins: int, folder: Path, size: int = REFERENCE_TEST_SIZE) -> None:
        super().__init__(bins, folder, size)

    def resized(self, anomaly_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return reference_test_map(anomaly_map, self.size), reference_test_mask(mask, self.size)


def _streaming_scorer(bins: int, folder: Path) -> Scorer:
    from .metrics import PixelMetrics

    return PixelMetrics(bins=bins)


def _map_max(anomaly_map: np.ndarray) -> float:
    return float(np.max(anomaly_map))


def _resized_map_max(anomaly_map: np.ndarray) -> float:
    # the official image score is the max of the category-normalised 400x400 map; normalisation is one
    # increasing affine map per category, so the max of the resized map ranks images identically
    return float(resize_map(anomaly_map).max())


def _paper_counts(dataset: str, sample: Sample) -> bool:
    return sample.label == 1 or PAPER_COUNTS_NORMAL.get(dataset, False)


PROTOCOLS.register("full")(EvalProtocol(
    name="full",
    summary="every test image at its own resolution, masks > 0, streaming 4096-bin metrics",
    folder="",
    mask_threshold=0,
    counts=lambda dataset, sample: True,
    max_score=_map_max,
    scorer=_streaming_scorer,
    mean_rounding=None,
))

PROTOCOLS.register("paper")(EvalProtocol(
    name="paper",
    summary=("the paper's Table 1 (sybeam27/IAP-ZSAS): 400x400 bicubic maps and nearest masks (> 128), "
             "category min-max, exact AP, F1-max over 100 thresholds"),
    folder="protocol-paper",
    mask_threshold=PAPER_MASK_THRESHOLD,
    counts=_paper_counts,
    max_score=_resized_map_max,
    scorer=HeldMaps,
    mean_rounding=PAPER_ROUNDING,
))

PROTOCOLS.register("anomalyclip-test")(EvalProtocol(
    name="anomalyclip-test",
    summary=("as zqhang/AnomalyCLIP test.py (and FAPrompt's, AdaCLIP's): maps and masks at the 518 px input size, "
             "masks PIL-bilinear > 0.5, exact pixel AUROC and AP"),
    folder="protocol-anomalyclip-test",
    mask_threshold=0,  # dataset.py: mask > 0
    counts=lambda dataset, sample: True,  # test.py evaluates every test image
    max_score=lambda anomaly_map: float(reference_test_map(anomaly_map).max()),
    scorer=InputSizeMaps,
    mean_rounding=None,  # test.py averages the unrounded per-category values
))
