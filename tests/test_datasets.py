"""Each loader against a tiny fake tree in that dataset's exact layout."""
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.data.datasets import load_dataset, load_mask
from iapas.errors import DatasetError


def img(path: Path, size=(8, 6), value=100, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)
    return path


def mask(path: Path, size=(8, 6), on=True):
    array = np.zeros((size[1], size[0]), np.uint8)
    if on:
        array[1:3, 2:5] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def summary(dataset):
    return {c: sorted((s.image_path.name, s.label, s.defect_type) for s in dataset.samples(c)) for c in dataset.categories}


def test_mvtec_layout(tmp_path):
    img(tmp_path / "bottle/train/good/000.png")
    img(tmp_path / "bottle/test/good/000.png")
    img(tmp_path / "bottle/test/broken_large/000.png")
    mask(tmp_path / "bottle/ground_truth/broken_large/000_mask.png")
    dataset = load_dataset("mvtec", tmp_path)
    assert summary(dataset) == {"bottle": [("000.png", 0, "good"), ("000.png", 1, "broken_large")]}
    assert [p.name for p in dataset.normal["bottle"]] == ["000.png"]
    anomalous = next(s for s in dataset.samples("bottle") if s.label)
    assert load_mask(anomalous, 6, 8).sum() == 6  # rows 1-2, columns 2-4
    assert not load_mask(dataset.samples("bottle")[0], 6, 8).any() or dataset.samples("bottle")[0].label


def test_mvtec_missing_mask_and_size_mismatch(tmp_path):
    img(tmp_path / "cable/test/cut/001.png")
    with pytest.raises(DatasetError, match="no ground-truth mask for anomalous image .*001.png"):
        load_dataset("mvtec", tmp_path)
    mask(tmp_path / "cable/ground_truth/cut/001_mask.png", size=(4, 4))
    sample = load_dataset("mvtec", tmp_path).samples("cable")[0]
    with pytest.raises(DatasetError, match="is 4x4 but image .* is 8x6"):
        load_mask(sample, 6, 8)


def test_mpdd_and_dtd_share_the_mvtec_layout(tmp_path):
    img(tmp_path / "bracket_black/test/good/000.png")
    img(tmp_path / "bracket_black/test/hole/000.png")
    mask(tmp_path / "bracket_black/ground_truth/hole/000_mask.png")
    assert summary(load_dataset("mpdd", tmp_path))["bracket_black"][1] == ("000.png", 1, "hole")
    assert load_dataset("dtd", tmp_path).categories == ["bracket_black"]


def test_btad_layout(tmp_path):
    img(tmp_path / "01/train/ok/0000.bmp")
    img(tmp_path / "01/test/ok/0000.bmp")
    img(tmp_path / "01/test/ko/0001.bmp")
    mask(tmp_path / "01/ground_truth/ko/0001.png")
    img(tmp_path / "03/test/ko/0002.bmp")
    mask(tmp_path / "03/ground_truth/ko/0002.bmp")
    dataset = load_dataset("btad", tmp_path)
    assert summary(dataset) == {"01": [("0000.bmp", 0, "good"), ("0001.bmp", 1, "ko")], "03": [("0002.bmp", 1, "ko")]}
    assert [p.name for p in dataset.normal["01"]] == ["0000.bmp"]


def test_visa_1cls_split(tmp_path):
    img(tmp_path / "candle/Data/Images/Normal/0000.JPG")
    img(tmp_path / "candle/Data/Images/Normal/0001.JPG")
    img(tmp_path / "candle/Data/Images/Anomaly/000.JPG")
    mask(tmp_path / "candle/Data/Masks/Anomaly/000.png")
    (tmp_path / "split_csv").mkdir()
    with open(tmp_path / "split_csv/1cls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerow(["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""])
        writer.writerow(["candle", "test", "normal", "candle/Data/Images/Normal/0001.JPG", ""])
        writer.writerow(["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"])
    dataset = load_dataset("visa", tmp_path)
    assert summary(dataset) == {"candle": [("000.JPG", 1, "anomaly"), ("0001.JPG", 0, "good")]}
    assert [p.name for p in dataset.normal["candle"]] == ["0000.JPG"]
    (tmp_path / "split_csv/1cls.csv").write_text("object,split\ncandle,test\n")
    with pytest.raises(DatasetError, match="lacks columns"):
        load_dataset("visa", tmp_path)


def test_ksdd1_labels_from_masks(tmp_path):
    img(tmp_path / "kos01/Part0.jpg")
    mask(tmp_path / "kos01/Part0_label.bmp", on=False)
    img(tmp_path / "kos01/Part1.jpg")
    mask(tmp_path / "kos01/Part1_label.bmp", on=True)
    dataset = load_dataset("ksdd1", tmp_path)
    assert summary(dataset) == {"ksdd1": [("Part0.jpg", 0, "good"), ("Part1.jpg", 1, "defect")]}
    assert [p.name for p in dataset.normal["ksdd1"]] == ["Part0.jpg"]


def test_mtd_layout(tmp_path):
    img(tmp_path / "MT_Free/Imgs/exp1_num_1.jpg")
    img(tmp_path / "MT_Blowhole/Imgs/exp1_num_2.jpg")
    mask(tmp_path / "MT_Blowhole/Imgs/exp1_num_2.png")
    dataset = load_dataset("mtd", tmp_path)
    assert summary(dataset) == {"mtd": [("exp1_num_1.jpg", 0, "good"), ("exp1_num_2.jpg", 1, "blowhole")]}


def test_dagm_layout(tmp_path):
    img(tmp_path / "Class1/Train/0001.PNG", mode="L")
    img(tmp_path / "Class1/Train/0002.PNG", mode="L")
    mask(tmp_path / "Class1/Train/Label/0002_label.PNG")
    img(tmp_path / "Class1/Test/0003.PNG", mode="L")
    img(tmp_path / "Class1/Test/0004.PNG", mode="L")
    mask(tmp_path / "Class1/Test/Label/0004_label.PNG")
    dataset = load_dataset("dagm", tmp_path)
    assert summary(dataset) == {"Class1": [("0003.PNG", 0, "good"), ("0004.PNG", 1, "defect")]}
    assert [p.name for p in dataset.normal["Class1"]] == ["0001.PNG"]


def test_generic_folder(tmp_path):
    root = tmp_path / "widget"
    img(root / "good/a.png")
    img(root / "dent/b.png")
    mask(root / "ground_truth/dent/b_mask.png")
    assert summary(load_dataset("folder", root)) == {"widget": [("a.png", 0, "good"), ("b.png", 1, "dent")]}
    with pytest.raises(DatasetError, match="needs .*good"):
        load_dataset("folder", tmp_path)


@pytest.mark.parametrize("name", ["mvtec", "visa", "mpdd", "btad", "ksdd1", "mtd", "dtd", "dagm", "folder"])
def test_missing_root_and_wrong_layout(tmp_path, name):
    with pytest.raises(DatasetError, match="root not found"):
        load_dataset(name, tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        load_dataset(name, tmp_path / "empty")


def test_unknown_category(tmp_path):
    img(tmp_path / "bottle/test/good/000.png")
    with pytest.raises(DatasetError, match="has no category 'cable'"):
        load_dataset("mvtec", tmp_path).samples("cable")


def test_mtd_masks_are_binarised_at_128(tmp_path):
    # MTD's masks ring each defect with compression noise (grey 1-128): only grey > 128 is a defect
    img(tmp_path / "MT_Crack/Imgs/exp1_num_3.jpg")
    noisy = np.zeros((6, 8), np.uint8)
    noisy[1:3, 2:5] = 255
    noisy[4, :] = 100
    Image.fromarray(noisy).save(tmp_path / "MT_Crack/Imgs/exp1_num_3.png")
    (sample,) = load_dataset("mtd", tmp_path).samples("mtd")
    assert load_mask(sample, 6, 8).sum() == 6
