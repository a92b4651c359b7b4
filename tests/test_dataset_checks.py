"""Dataset layouts and checks that run before any model loads: VisA's prepared layout, empty splits, DAGM labels, --limit."""
from pathlib import Path

import numpy as np
import pytest

from iapas.cli import main
from iapas.data.datasets import Sample, limited_samples, load_dataset
from iapas.errors import DatasetError

from test_datasets import img, mask, summary


def visa_prepared(root):
    """amazon-science/spot-diff's prepared layout: 1cls/<class>/{train/good, test/{good,bad}, ground_truth/bad}."""
    img(root / "1cls/candle/train/good/000.JPG")
    img(root / "1cls/candle/test/good/001.JPG")
    img(root / "1cls/candle/test/bad/002.JPG")
    mask(root / "1cls/candle/ground_truth/bad/002.png")  # named like its image, no _mask suffix
    return root


def test_visa_prepared_layout(tmp_path):
    dataset = load_dataset("visa", visa_prepared(tmp_path))
    assert summary(dataset) == {"candle": [("001.JPG", 0, "good"), ("002.JPG", 1, "bad")]}
    assert [p.name for p in dataset.calibration_images("candle")] == ["000.JPG"]
    [anomalous] = [s for s in dataset.samples("candle") if s.label]
    assert anomalous.mask_path == tmp_path / "1cls/candle/ground_truth/bad/002.png"
    assert summary(load_dataset("visa", tmp_path / "1cls")) == summary(dataset)  # the 1cls folder itself works too


def test_visa_prepared_layout_needs_its_masks(tmp_path):
    img(tmp_path / "1cls/candle/test/bad/002.JPG")
    with pytest.raises(DatasetError, match="no ground-truth mask for anomalous image .*002.JPG"):
        load_dataset("visa", tmp_path)


def test_empty_train_good_is_named_before_any_model_loads(capsys, tmp_path):
    img(tmp_path / "bottle/test/good/000.png")
    (tmp_path / "bottle/train/good").mkdir(parents=True)
    dataset = load_dataset("mvtec", tmp_path)
    with pytest.raises(DatasetError, match="mvtec/bottle has no normal images to calibrate from .*bottle/train/good"):
        dataset.check("bottle")
    # the weights dir is empty: a model loaded first would fail with a weights error instead
    code = main(["eval", "--dataset", "mvtec", "--root", str(tmp_path), "-o", str(tmp_path / "r"),
                 "--weights", str(tmp_path / "no-weights"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no normal images to calibrate from" in err and "weights" not in err.split("from")[0]


def test_empty_category_fails_before_any_model_loads(capsys, tmp_path):
    img(tmp_path / "bottle/train/good/000.png")
    (tmp_path / "bottle/test/good").mkdir(parents=True)
    code = main(["eval", "--dataset", "mvtec", "--root", str(tmp_path), "-o", str(tmp_path / "r"),
                 "--weights", str(tmp_path / "no-weights"), "--no-progress"])
    assert code == 2 and "mvtec/bottle has no test images" in capsys.readouterr().err


def test_single_split_layouts_say_where_calibration_images_come_from(tmp_path):
    img(tmp_path / "kos01/Part0.jpg")
    mask(tmp_path / "kos01/Part0_label.bmp")  # anomalous: no normal image left to calibrate from
    with pytest.raises(DatasetError, match="they come from its normal test images"):
        load_dataset("ksdd1", tmp_path).check("ksdd1")


def test_dagm_without_label_folder_is_refused(tmp_path):
    img(tmp_path / "Class1/Test/0003.PNG", mode="L")
    with pytest.raises(DatasetError, match="Class1/Test has no Label/ folder"):
        load_dataset("dagm", tmp_path)


def test_dagm_label_differing_in_case_is_used_with_a_note(capsys, tmp_path):
    img(tmp_path / "Class1/Train/0001.PNG", mode="L")
    (tmp_path / "Class1/Train/Label").mkdir()
    img(tmp_path / "Class1/Test/0004.PNG", mode="L")
    mask(tmp_path / "Class1/Test/label/0004_Label.png")
    dataset = load_dataset("dagm", tmp_path)
    assert summary(dataset) == {"Class1": [("0004.PNG", 1, "defect")]}
    err = capsys.readouterr().err
    assert "label folder is named" in err and "0004_Label.png differs in case from the expected 0004_label.PNG" in err


def samples(labels):
    return [Sample(Path(f"{i:03d}.png"), None, label, "c", "d" if label else "good")
            for i, label in enumerate(labels)]


def test_limit_draws_normal_and_anomalous_alike_with_the_seed():
    pool = samples([0] * 5 + [1] * 45)  # sorted layouts put all good images together
    first = limited_samples(pool, 4, seed=111)
    assert len(first) == 4 and {s.label for s in first} == {0, 1}
    assert first == limited_samples(pool, 4, seed=111)  # reproducible
    assert [s.image_path for s in first] == sorted(s.image_path for s in first)  # original order kept
    assert any(limited_samples(pool, 4, seed) != first for seed in range(5))  # the seed chooses
    rare = samples([1] * 49 + [0])  # a single normal image still gets in
    assert {s.label for s in limited_samples(rare, 2, seed=0)} == {0, 1}
    assert limited_samples(pool, 0, 1) == pool and limited_samples(pool, 80, 1) == pool


def test_eval_limit_keeps_both_labels(synth_root_small, tmp_path):
    from iapas.evaluation.evaluate import EvalOptions, MethodMaps, evaluate_category
    from iapas.types import Boxes, Masks, Result

    class Dark:
        def prepare(self, *args):
            pass

        def segment(self, pixels):
            return Result(1 - pixels.mean(2).astype(np.float32) / 255, Boxes.empty(), Masks.empty(*pixels.shape[:2]), ())

    options = EvalOptions("mvtec", synth_root_small, tmp_path, progress=False, limit=3)
    dataset = load_dataset("mvtec", synth_root_small)
    record = evaluate_category(MethodMaps(Dark(), dataset.name), dataset, "washer", options, tmp_path)
    assert record["images"] == 3 and 1 <= record["anomalous"] <= 2  # a prefix would be three "good" images


@pytest.fixture(scope="module")
def synth_root_small(tmp_path_factory):
    from iapas.data.synth import SynthSpec, write_synth_dataset

    spec = SynthSpec(categories=("washer",), defects=("scratch", "hole"), train_good=1, test_good=3, per_defect=4,
                     size=32, seed=3)
    return write_synth_dataset(tmp_path_factory.mktemp("synth-small"), spec)
