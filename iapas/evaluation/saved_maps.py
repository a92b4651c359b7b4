"""Anomaly maps on disk: the naming `--save-maps` writes and `iapas eval --from-maps DIR` reads.

A map is one `.npy` file holding a 2-D float array of the test image's height and width, named by
the image's path relative to the dataset root with its suffix replaced by `.npy`:
`DIR/<category>/test/<defect>/<name>.npy` for MVTec-like layouts, `DIR/MT_Blowhole/Imgs/<name>.npy`
for MTD, `DIR/<object>/Data/Images/Anomaly/<name>.npy` for VisA. Any tool can write maps this way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..data.datasets import Dataset, Sample
from ..errors import DatasetError, MetricsInputError
from ..files import atomic_write
from .metrics import check_binnable


class MapsError(DatasetError):
    """A folder of saved maps does not match the dataset."""


def map_path(folder: Path, dataset: Dataset, sample: Sample) -> Path:
    """Where the map of `sample` lies under `folder`."""
    return Path(folder) / sample.image_path.relative_to(dataset.root).with_suffix(".npy")


def save_map(folder: Path, dataset: Dataset, sample: Sample, anomaly_map: np.ndarray) -> Path:
    """Write `anomaly_map` (as is, so a re-evaluation sees the very same values) where `--from-maps` looks."""
    array = np.asarray(anomaly_map)  # written whole or not at all: an interrupted eval never leaves a truncated map
    return atomic_write(map_path(folder, dataset, sample), lambda temporary: np.save(temporary, array))


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from None


def read_map(path: Path) -> np.ndarray:
    """A saved map as a memory-mapped float array, or a one-line MapsError (empty file, .npz, pickle, ints)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:  # EOFError: a 0-byte file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MapsError(f"map {path} is not a readable .npy file ({reason})") from None
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive named .npy as a dict of arrays
        if hasattr(array, "close"):
            array.close()
        raise MapsError(f"map {path} is an .npz archive, not one .npy array; save the map with np.save")
    if not np.issubdtype(array.dtype, np.floating):
        raise MapsError(f"map {path} holds {array.dtype} values, not floats")
    return array


class SavedMaps:
    """Reads saved maps in place of a method, after checking the folder against the dataset.

    `required` are the samples the evaluation will read (a map missing for one of them is an error);
    a `.npy` under the folder that names no test image of the dataset is an error too.
    """

    name = "saved-maps"

    def __init__(self, folder: Path, dataset: Dataset, required: Mapping[str, Sequence[Sample]]) -> None:
        self.folder, self.dataset = Path(folder), dataset
        if not self.folder.is_dir():
            raise MapsError(f"maps folder not found: {self.folder}")
        self._check(list(self._all_samples()), [s for samples in required.values() for s in samples])

    def _all_samples(self) -> Iterable[Sample]:
        for category in self.dataset.categories:
            yield from self.dataset.samples(category)

    def _check(self, every: list[Sample], required: list[Sample]) -> None:
        known = {map_path(self.folder, self.dataset, s) for s in every}
        extra = sorted(p for p in self.folder.rglob("*.npy") if p not in known)
        if extra:
            raise MapsError(f"extra map {extra[0]} names no test image of {self.dataset.name} under {self.dataset.root}"
                            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        missing = [s for s in required if not map_path(self.folder, self.dataset, s).is_file()]
        if missing:
            raise MapsError(f"missing map {map_path(self.folder, self.dataset, missing[0])} for {missing[0].image_path}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        for sample in required:
            path = map_path(self.folder, self.dataset, sample)
            array = read_map(path)
            expected = _image_size(sample.image_path)
            if array.shape != expected:
                raise MapsError(f"map {path} is {'x'.join(map(str, array.shape))} but its image {sample.image_path.name} "
                                f"is {expected[0]}x{expected[1]} (height x width)")
            try:  # the values too, before anything is measured: the rule both protocols apply to every map
                check_binnable(array, 0.0, 1.0, str(path))
            except MetricsInputError as error:
                raise MapsError(str(error)) from None

    def prepare(self, category: str, normal_images: list[Path], kind: str, out_dir: Path) -> None:
        """Nothing to calibrate: the maps are already made."""

    def map_for(self, sample: Sample) -> tuple[np.ndarray, float, tuple[int, int]]:
        """(map, image score = its max, (H, W)) of one test image."""
        anomaly_map = np.asarray(read_map(map_path(self.folder, self.dataset, sample)))
        return anomaly_map, float(anomaly_map.max()), anomaly_map.shape
