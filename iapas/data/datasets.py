"""Loaders for the benchmark layouts. Each yields Samples; masks load lazily at the image's size."""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..images import IMAGE_SUFFIXES
from ..registry import Registry

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One test image: label 1 is anomalous; mask_path is None for normal images.

    A mask pixel is anomalous when its grey value is above `mask_threshold` (0 for binary masks).
    """

    image_path: Path
    mask_path: Path | None
    label: int
    category: str
    defect_type: str
    mask_threshold: int = 0


@dataclass(frozen=True)
class Dataset:
    """A dataset's categories with their test samples and normal (training) images."""

    name: str
    root: Path
    test: dict[str, list[Sample]]
    normal: dict[str, list[Path]]
    normal_source: str = "<category>/train/good"  # where calibration images come from, for messages and the README

    @property
    def categories(self) -> list[str]:
        return sorted(self.test)

    def samples(self, category: str) -> list[Sample]:
        if category not in self.test:
            raise DatasetError(f"{self.name} has no category {category!r} under {self.root} (found: {', '.join(self.categories)})")
        return self.test[category]

    def calibration_images(self, category: str) -> list[Path]:
        """The normal images `category` is calibrated from; a DatasetError when there are none."""
        images = self.normal.get(category, [])
        if not images:
            raise DatasetError(f"{self.name}/{category} has no normal images to calibrate from "
                               f"(they come from {self.normal_source.replace('<category>', category)} under {self.root})")
        return images

    def check(self, category: str) -> None:
        """Fail now, before any model loads, when `category` is unknown, has no test image or no calibration image."""
        if not self.samples(category):
            raise DatasetError(f"{self.name}/{category} has no test images under {self.root}")
        self.calibration_images(category)


def limited_samples(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """At most `limit` samples drawn at random with `seed`, normal and anomalous alike, in their original order.

    A plain prefix would take only the first defect folder (or only good images) of a sorted layout;
    a seeded draw over all samples is reproducible, and with limit >= 2 it keeps at least one image of
    each label present so that image AUROC and pixel metrics stay defined.
    """
    if not limit or limit >= len(samples):
        return list(samples)
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(samples))]
    chosen = order[:limit]
    for label in (0, 1):
        if limit >= 2 and not any(samples[i].label == label for i in chosen):
            spare = next((i for i in order[limit:] if samples[i].label == label), None)
            if spare is not None:
                majority = next(j for j in reversed(range(limit)) if samples[chosen[j]].label != label)
                chosen[majority] = spare
    return [samples[i] for i in sorted(chosen)]


Loader = Callable[[Path], Dataset]
DATASETS: Registry[Loader] = Registry("dataset")


def load_mask(sample: Sample, height: int, width: int, threshold: int = 0) -> np.ndarray:
    """(H, W) bool ground truth; all False for a normal image; DatasetError when sizes disagree.

    A pixel is anomalous when its grey value exceeds both `threshold` and the sample's own threshold.
    """
    if sample.mask_path is None:
        return np.zeros((height, width), bool)
    try:
        with Image.open(sample.mask_path) as mask:
            array = np.asarray(mask.convert("L")) > max(threshold, sample.mask_threshold)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read mask {sample.mask_path}: {error}") from None
    if array.shape != (height, width):
        raise DatasetError(
            f"mask {sample.mask_path} is {array.shape[1]}x{array.shape[0]} but image {sample.image_path} is {width}x{height}"
        )
    return array


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def _require_root(root: Path, name: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{name} root not found: {root}")
    return root


def _find_mask(candidates: list[Path], image: Path) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(f"no ground-truth mask for anomalous image {image} (looked for {candidates[0].name})")


def _mvtec_like(root: Path, name: str, good: str = GOOD, mask_suffix: str = "_mask") -> Dataset:
    """<cat>/train/<good>, <cat>/test/<defect>, <cat>/ground_truth/<defect>/<stem><mask_suffix>.*"""
    root = _require_root(root, name)
    test: dict[str, list[Sample]] = {}
    normal: dict[str, list[Path]] = {}
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir()):
        category = category_dir.name
        samples = []
        for defect_dir in sorted(p for p in (category_dir / "test").iterdir() if p.is_dir()):
            for image in _images_in(defect_dir):
                if defect_dir.name == good:
                    samples.append(Sample(image, None, 0, category, GOOD))
                    continue
                gt = category_dir / "ground_truth" / defect_dir.name
                candidates = [gt / f"{image.stem}{mask_suffix}{ext}" for ext in (".png", ".bmp", ".tif", image.suffix)]
                samples.append(Sample(image, _find_mask(candidates, image), 1, category, defect_dir.name))
        test[category] = samples
        normal[category] = _images_in(category_dir / "train" / good)
    if not test:
        raise DatasetError(f"no {name} categories under {root}: expected <category>/test/<defect>/ folders")
    return Dataset(name, root, test, normal)


@DATASETS.register("mvtec")
def load_mvtec(root: Path) -> Dataset:
    return _mvtec_like(root, "mvtec")


@DATASETS.register("mpdd")
def load_mpdd(root: Path) -> Dataset:
    return _mvtec_like(root, "mpdd")


@DATASETS.register("dtd")
def load_dtd_synthetic(root: Path) -> Dataset:
    return _mvtec_like(root, "dtd")


@DATASETS.register("btad")
def load_btad(root: Path) -> Dataset:
    """01/, 02/, 03/ each with train/ok, test/ok, test/ko and ground_truth/ko (mask of the same stem)."""
    return _mvtec_like(root, "btad", good="ok", mask_suffix="")


@DATASETS.register("visa")
def load_visa(root: Path) -> Dataset:
    """VisA as released (split_csv/1cls.csv) or as prepared by its own script (1cls/<class>/{train,test,ground_truth})."""
    root = _require_root(root, "visa")
    split_file = root / "split_csv" / "1cls.csv"
    if split_file.is_file():
        return _visa_from_csv(root, split_file)
    # amazon-science/spot-diff prepare_data.py writes 1cls/<class>/train/good, test/{good,bad} and
    # ground_truth/bad/<image stem>.png: the MVTec layout with masks named like their images.
    prepared = root if root.name == "1cls" else root / "1cls"
    if prepared.is_dir():
        dataset = _mvtec_like(prepared, "visa", mask_suffix="")
        return Dataset("visa", root, dataset.test, dataset.normal)
    raise DatasetError(f"no VisA layout under {root}: expected split_csv/1cls.csv or the prepared 1cls/<class>/ folders")


def _visa_from_csv(root: Path, split_file: Path) -> Dataset:
    """split_csv/1cls.csv with columns object, split, label, image, mask; paths relative to the root."""
    test: dict[str, list[Sample]] = {}
    normal: dict[str, list[Path]] = {}
    with open(split_file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{split_file} lacks columns {sorted(missing)}")
        for row in reader:
            image = root / row["image"]
            if not image.is_file():
                raise DatasetError(f"VisA image listed in 1cls.csv is missing: {image}")
            anomalous = row["label"].strip().lower() == "anomaly"
            if row["split"] == "train":
                if not anomalous:
                    normal.setdefault(row["object"], []).append(image)
                continue
            mask = root / row["mask"] if anomalous and row["mask"] else None
            if anomalous and (mask is None or not mask.is_file()):
                raise DatasetError(f"no ground-truth mask for anomalous image {image}")
            test.setdefault(row["object"], []).append(Sample(image, mask, int(anomalous), row["object"], "anomaly" if anomalous else GOOD))
    if not test:
        raise DatasetError(f"{split_file} lists no test images")
    return Dataset("visa", root, test, normal, "the normal train rows of split_csv/1cls.csv")


def _single_category(name: str, root: Path, samples: list[Sample], category: str | None = None) -> Dataset:
    """A one-category dataset whose test set has no separate normal split: its normal test images calibrate."""
    category = category or name
    return Dataset(name, root, {category: samples}, {category: [s.image_path for s in samples if s.label == 0]},
                   "its normal test images (this layout has no training split)")


def _label_paired(category: str, pairs: Iterator[tuple[Path, Path | None]], defect: str) -> list[Sample]:
    """Samples whose label comes from whether their mask has any foreground pixel."""
    samples = []
    for image, mask in pairs:
        if mask is None:
            samples.append(Sample(image, None, 0, category, GOOD))
            continue
        try:
            with Image.open(mask) as opened:
                anomalous = bool(np.asarray(opened.convert("L")).any())
        except (OSError, ValueError) as error:  # an empty or damaged label (PIL's UnidentifiedImageError is an OSError)
            raise DatasetError(f"cannot read label {mask} of {image.name}: {str(error).splitlines()[0] or 'unreadable'}; "
                               "restore it from the dataset") from None
        samples.append(Sample(image, mask if anomalous else None, int(anomalous), category, defect if anomalous else GOOD))
    return samples


@DATASETS.register("ksdd1")
def load_ksdd1(root: Path) -> Dataset:
    """KolektorSDD: kosNN/PartK.jpg with kosNN/PartK_label.bmp; an empty label is a normal image."""
    root = _require_root(root, "ksdd1")
    pairs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in _images_in(folder):
            if image.stem.endswith("_label"):
                continue
            pairs.append((image, _find_mask([folder / f"{image.stem}_label{ext}" for ext in (".bmp", ".png")], image)))
    if not pairs:
        raise DatasetError(f"no KolektorSDD images under {root}: expected kosNN/PartK.jpg with PartK_label.bmp")
    return _single_category("ksdd1", root, _label_paired("ksdd1", iter(pairs), "defect"))


# MTD's masks carry compression noise: grey values 1-128 ring the defects (about 2 % of the pixels above 0
# in the 392 defect masks of abin24/Magnetic-tile-defect-datasets.); binarise at 128 as the IAP-AS code reads
# every mask (sybeam27/IAP-ZSAS utils/function.py load_image)
MTD_MASK_THRESHOLD = 128


@DATASETS.register("mtd")
def load_mtd(root: Path) -> Dataset:
    """Magnetic Tile Defect: MT_<Type>/Imgs/<name>.jpg with the mask <name>.png beside it; MT_Free is normal."""
    root = _require_root(root, "mtd")
    samples = []
    for folder in sorted(root.glob("MT_*/Imgs")):
        defect = folder.parent.name[3:].lower()
        for image in sorted(folder.glob("*.jpg")):
            if defect == "free":
                samples.append(Sample(image, None, 0, "mtd", GOOD))
            else:
                samples.append(Sample(image, _find_mask([image.with_suffix(".png")], image), 1, "mtd", defect, MTD_MASK_THRESHOLD))
    if not samples:
        raise DatasetError(f"no Magnetic Tile images under {root}: expected MT_<Type>/Imgs/*.jpg")
    return _single_category("mtd", root, samples)


@DATASETS.register("dagm")
def load_dagm2007(root: Path) -> Dataset:
    """DAGM2007: ClassN/Test/<id>.PNG with ClassN/Test/Label/<id>_label.PNG for the defective ones."""
    root = _require_root(root, "dagm")
    test: dict[str, list[Sample]] = {}
    normal: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "Test").is_dir()):
        samples = []
        labels = _dagm_labels(class_dir / "Test")
        for image in _images_in(class_dir / "Test"):
            label = labels.get(image.name)
            samples.append(Sample(image, label, int(label is not None), class_dir.name, "defect" if label else GOOD))
        test[class_dir.name] = samples
        train = class_dir / "Train"
        train_labels = _dagm_labels(train) if _images_in(train) else {}
        normal[class_dir.name] = [p for p in _images_in(train) if p.name not in train_labels]
    if not test:
        raise DatasetError(f"no DAGM2007 classes under {root}: expected ClassN/Test/")
    return Dataset("dagm", root, test, normal, "<category>/Train (images without a label)")


def _dagm_labels(folder: Path) -> dict[str, Path]:
    """Image file name -> its label file in <folder>/Label; a DatasetError when the Label folder is missing.

    DAGM names a label <id>_label.PNG beside the image <id>.PNG. A label whose name matches only when
    case is ignored (copies through case-insensitive file systems) is used, with a note saying so.
    """
    label_dirs = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() == "label"] if folder.is_dir() else []
    if not label_dirs:
        raise DatasetError(f"DAGM folder {folder} has no Label/ folder: without it every image would count as normal")
    label_dir = label_dirs[0]
    if label_dir.name != "Label":
        print(f"note: DAGM label folder is named {label_dir} (expected Label); using it", file=sys.stderr)
    files = {p.name: p for p in label_dir.iterdir() if p.is_file()}
    folded = {name.lower(): path for name, path in files.items()}
    labels: dict[str, Path] = {}
    for image in _images_in(folder):
        expected = f"{image.stem}_label{image.suffix}"
        found = files.get(expected) or folded.get(expected.lower())
        if found is None:
            continue
        if found.name != expected:
            print(f"note: DAGM label {found} differs in case from the expected {expected}; using it", file=sys.stderr)
        labels[image.name] = found
    return labels


@DATASETS.register("folder")
def load_folder(root: Path) -> Dataset:
    """A generic folder: good/, <defect>/ and ground_truth/<defect>/<stem>_mask.png; one category."""
    root = _require_root(root, "folder")
    if not (root / GOOD).is_dir():
        raise DatasetError(f"generic folder dataset needs {root / GOOD}/ with normal images")
    samples = [Sample(p, None, 0, root.name, GOOD) for p in _images_in(root / GOOD)]
    for defect_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in (GOOD, "ground_truth")):
        for image in _images_in(defect_dir):
            mask = _find_mask([root / "ground_truth" / defect_dir.name / f"{image.stem}_mask{ext}" for ext in (".png", ".bmp")], image)
            samples.append(Sample(image, mask, 1, root.name, defect_dir.name))
    return _single_category("folder", root, samples, root.name)


@DATASETS.register("medical")
def load_medical(root: Path) -> Dataset:
    """A segmentation set such as CVC-ColonDB / CVC-ClinicDB: images/ and masks/ paired by file stem; one category.

    Also AdaCLIP's converted layout, <Name>/test/<kind>/ with <Name>/ground_truth/<kind>/ paired in sorted
    order (caoyunkang/AdaCLIP data_preprocess/colondb.py); the category is then <Name> (e.g. ColonDB),
    the class name AdaCLIP puts into its prompts. An image whose mask is empty is normal.
    """
    root = _require_root(root, "medical")
    converted = sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
    if converted:
        category = converted[0].name
        pairs = []
        for kind in sorted(p for p in (converted[0] / "test").iterdir() if p.is_dir()):
            masks = _images_in(converted[0] / "ground_truth" / kind.name) if kind.name != GOOD else []
            images = _images_in(kind)
            pairs += [(image, masks[i] if i < len(masks) else None) for i, image in enumerate(images)]
        return _single_category("medical", root, _label_paired(category, iter(pairs), "lesion"), category)
    masks = {p.stem: p for p in _images_in(root / "masks")}
    images = _images_in(root / "images")
    if not images:
        raise DatasetError(f"no medical images under {root}: expected images/ and masks/ (or <Name>/test/)")
    pairs = [(image, masks.get(image.stem)) for image in images]
    return _single_category("medical", root, _label_paired(root.name, iter(pairs), "lesion"), root.name)


def load_dataset(name: str, root: str | Path) -> Dataset:
    """The dataset `name` (mvtec, visa, mpdd, btad, ksdd1, mtd, dtd, dagm, folder, medical) at `root`."""
    return DATASETS.get(name)(Path(root))
