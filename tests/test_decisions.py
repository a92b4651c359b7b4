"""Decisions: each threshold rule on hand-made scores, F1-optimal against brute force, MEBin, regions, the thresholds file."""
import json
import shutil

import numpy as np
import pytest

from iapas.config import Config
from iapas.decisions.decide import DecisionSettings, decide_map
from iapas.decisions.mebin import MEBin
from iapas.decisions.regions import defect_regions, min_area_pixels, parse_area
from iapas.decisions.thresholds import NormalImagesRule, f1_optimal, f1_optimal_from_counts, manual
from iapas.decisions.thresholds_file import ThresholdsFile, setup_identity
from iapas.errors import DecisionError, IapasError
from iapas.types import Boxes


def test_normal_images_rule_is_max_plus_margin_sd():
    scores = np.array([0.1] * 9 + [0.3])  # mean 0.12; sum of squares 9 * 0.02^2 + 0.18^2 = 0.036; sd = sqrt(0.036 / 9)
    maxima = np.array([0.2] * 5 + [0.4] * 5)  # sd = sqrt(10 * 0.1^2 / 9)
    image, pixel = NormalImagesRule(image_margin_sd=1.0, pixel_margin_sd=2.0).fit(scores, maxima)
    assert image.value == pytest.approx(0.3 + np.sqrt(0.004))
    assert pixel.value == pytest.approx(0.4 + 2 * np.sqrt(0.1 / 9))
    assert image.source == "normal-images" and image.rule["images"] == 10 and image.rule["margin_sd"] == 1.0
    assert image.rule["max"] == pytest.approx(0.3) and image.rule["sd"] == pytest.approx(np.sqrt(0.004))
    no_margin, _ = NormalImagesRule(0.0, 0.0).fit(scores, maxima)
    assert no_margin.value == pytest.approx(0.3)  # the highest normal image itself stays normal (score > threshold)
    assert decide_map(np.full((2, 2), 0.3, np.float32), 0.3, DecisionSettings(image_threshold=no_margin.value)).verdict == "normal"


def test_normal_images_rule_refuses_too_few_images_and_a_useless_threshold():
    with pytest.raises(DecisionError, match=r"needs at least 10 normal images .*got 9"):
        NormalImagesRule().fit(np.zeros(9), np.zeros(9))
    with pytest.raises(DecisionError, match="at least 10 images"):
        NormalImagesRule(min_images=5)
    with pytest.raises(DecisionError, match="top of the map scale"):
        NormalImagesRule().fit(np.ones(10), np.ones(10))
    with pytest.raises(DecisionError, match="0 or more"):
        NormalImagesRule(image_margin_sd=-1)
    zeros, _ = NormalImagesRule().fit(np.zeros(10), np.zeros(10))  # empty IAP-AS maps: only a positive score flags
    assert zeros.value == 0.0


def test_f1_optimal_hand_case():
    threshold = f1_optimal(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    # flagging >= 0.35 gives precision 2/3, recall 1, F1 0.8 (the best); halfway down to 0.1
    assert threshold.value == pytest.approx(0.225)
    assert threshold.rule["f1"] == pytest.approx(0.8)
    assert threshold.rule["precision"] == pytest.approx(2 / 3) and threshold.rule["recall"] == 1.0


def f1_of(labels, predicted):
    tp = int(np.sum(predicted & (labels == 1)))
    fp, fn = int(np.sum(predicted & (labels == 0))), int(np.sum(~predicted & (labels == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("seed", range(12))
def test_f1_optimal_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(4, 14))
    labels = rng.integers(0, 2, count)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(count), 1)  # one decimal: ties on purpose
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0] - 1], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1]])
    brute = max(f1_of(labels, scores > t) for t in candidates)
    found = f1_optimal(labels, scores)
    assert found.rule["f1"] == pytest.approx(brute)
    assert f1_of(labels, scores > found.value) == pytest.approx(brute)


def test_f1_optimal_refuses_one_class():
    with pytest.raises(DecisionError, match="both normal and anomalous"):
        f1_optimal(np.zeros(5), np.linspace(0, 1, 5))


def test_binned_pixel_threshold_matches_exact_on_distinct_bins():
    from iapas.evaluation.metrics import PixelMetrics

    rng = np.random.default_rng(3)
    scores = (rng.permutation(4096)[:300] + 0.5) / 4096  # each score alone in its bin
    labels = (scores + rng.normal(0, 0.2, 300) > 0.6).astype(int)
    metrics = PixelMetrics(bins=4096, with_pro=False)
    metrics.update(scores.reshape(15, 20).astype(np.float32), labels.reshape(15, 20).astype(bool))
    tp, fp = metrics.counts()
    binned = f1_optimal_from_counts(tp, fp, metrics.thresholds(), float(labels.sum()))
    exact = f1_optimal(labels, scores)
    assert binned.rule["f1"] == pytest.approx(exact.rule["f1"])
    assert f1_of(labels, scores > binned.value) == pytest.approx(exact.rule["f1"])


def test_manual_threshold_is_checked():
    assert manual(0.25, "--image-threshold").value == 0.25
    with pytest.raises(IapasError, match=r"must be in \[0, 1\]"):
        manual(1.5, "--image-threshold")


def test_regions_of_a_hand_drawn_mask():
    drawn = np.array([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 1, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],  # (2, 4) touches (1, 5) at a corner: one 8-connected region
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0, 1],
    ], bool)
    scores = np.where(drawn, 0.5, 0.0).astype(np.float32)
    scores[0, 0], scores[4, 7] = 0.9, 0.7
    kept, regions = defect_regions(drawn, scores)
    np.testing.assert_array_equal(kept, drawn)
    assert [(r.area_px, r.box) for r in regions] == [(4, (0, 0, 2, 3)), (1, (7, 4, 8, 5)), (1, (2, 4, 3, 5)), (2, (4, 1, 6, 3))]  # peak, then box
    assert regions[0].peak_score == pytest.approx(0.9) and regions[0].mean_score == pytest.approx((0.9 + 3 * 0.5) / 4)
    assert regions[0].area_fraction == pytest.approx(4 / 40)
    kept, regions = defect_regions(drawn, scores, min_area_px=2)
    assert [r.area_px for r in regions] == [4, 2] and int(kept.sum()) == 6


def test_region_phrase_is_the_box_covering_it_most():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    boxes = Boxes(np.array([[0, 0, 3, 3], [2, 2, 6, 6]], np.float32), np.array([0.9, 0.5], np.float32), ("dent", "scratch"))
    _, regions = defect_regions(mask, mask.astype(np.float32), boxes=boxes)
    assert regions[0].phrase == "scratch"  # 9 pixels x 0.5 beats 1 pixel x 0.9


@pytest.mark.parametrize("text, value", [("50", 50.0), ("0.001", 0.001), ("0.5%", 0.005), ("0", 0.0)])
def test_minimum_area_option(text, value):
    assert parse_area(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1", "abc", "2.5", "150%", "nan"])
def test_minimum_area_option_refusals(text):
    with pytest.raises(DecisionError, match="minimum defect area"):
        parse_area(text)


def test_minimum_area_in_pixels_or_fraction():
    assert min_area_pixels(50, 100, 100) == 50 and min_area_pixels(0.001, 100, 100) == 10 and min_area_pixels(0, 9, 9) == 0


def test_verdict_rules():
    values = np.zeros((20, 20), np.float32)
    values[2:4, 2:4] = 0.8  # a 4-pixel defect
    assert decide_map(values, None, DecisionSettings()).verdict == "undecided"
    by_image = decide_map(values, None, DecisionSettings(image_threshold=0.5))
    assert by_image.verdict == "anomalous" and by_image.pixel_threshold == 0.5 and by_image.defect_area_px == 4
    assert decide_map(values, None, DecisionSettings(image_threshold=0.9)).verdict == "normal"
    small = DecisionSettings(image_threshold=0.5, min_defect_area=5)
    assert decide_map(values, None, small).verdict == "normal"  # the only region is under the minimum area
    assert decide_map(values, None, DecisionSettings(pixel_threshold=0.5)).verdict == "anomalous"
    roi = np.ones((20, 20), bool)
    roi[:5, :5] = False
    outside = decide_map(values, None, DecisionSettings(image_threshold=0.5), roi=roi)
    assert outside.verdict == "normal" and outside.image_score == 0.0 and outside.regions == []


def test_mebin_stable_interval_rule():
    mebin = MEBin(min_interval_len=4)
    # runs of 2 (length 4), 1 (length 5) and 3 (length 5): 1 and 3 tie, the first met wins, its run's last index
    assert mebin.stable_end([0, 0, 2, 2, 2, 2, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3]) == (10, 1)
    assert mebin.stable_end([0, 1, 1, 0, 2, 2, 2, 0]) == (None, 0)  # no run of 4: no defect
    assert mebin.stable_end([0, 0, 2, 2, 2, 2, 0, 2, 2, 2, 2]) == (10, 2)  # equal runs of one count: the last one


def test_mebin_on_hand_made_maps():
    first = np.zeros((40, 40), np.float32)
    first[10:30, 10:30] = 200 / 255
    second = np.zeros((40, 40), np.float32)
    second[5:15, 5:15] = 100 / 255
    outcomes = MEBin().binarize([first, second])
    # range [100, 200]: the 20x20 plateau is one region from level 251 down to 3 -> 8-bit threshold int(3*100/255 + 100)
    assert outcomes[0].threshold == pytest.approx(101 / 255) and outcomes[0].regions == 1
    assert int(outcomes[0].mask.sum()) == 15 * 15  # a 6x6 erosion takes 5 rows and columns off the plateau
    assert outcomes[1].regions == 0 and not outcomes[1].mask.any()  # at the bottom of the range: nothing stands out
    assert not any(o.mask.any() for o in MEBin().binarize([np.zeros((8, 8)), np.zeros((8, 8))]))


def clip_config(clip_dir, tmp_path) -> Config:
    return Config(weights_dir=str(tmp_path / "nowhere")).updated({"clip_methods.weights": str(clip_dir)})


def test_thresholds_file_round_trip_and_refusals(tmp_path):
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    (clip_dir / "model.safetensors").write_bytes(b"weights-one")
    identity = setup_identity(clip_config(clip_dir, tmp_path), "winclip", {"category": "screw"})
    image, pixel = NormalImagesRule().fit(np.linspace(0.1, 0.2, 10), np.linspace(0.2, 0.3, 10))
    path = ThresholdsFile(identity, image, pixel, {"images": 10}).save(tmp_path / "thresholds.json")
    loaded = ThresholdsFile.load(path)
    assert loaded.image == image and loaded.pixel == pixel and loaded.identity == json.loads(json.dumps(identity))
    moved = tmp_path / "elsewhere" / "clip"
    shutil.copytree(clip_dir, moved)  # the same models on another machine, at another path and time
    loaded.check_matches(setup_identity(clip_config(moved, tmp_path), "winclip", {"category": "screw"}), path)
    with pytest.raises(DecisionError, match="was made for --method winclip, not adaclip"):
        loaded.check_matches(setup_identity(clip_config(moved, tmp_path), "adaclip", {"category": "screw"}), path)
    with pytest.raises(DecisionError, match=r'other settings \(settings.category "screw" -> "bolt"\)'):
        loaded.check_matches(setup_identity(clip_config(moved, tmp_path), "winclip", {"category": "bolt"}), path)
    (moved / "model.safetensors").write_bytes(b"weights-two")
    with pytest.raises(DecisionError, match=r"other settings \(models.clip "):
        loaded.check_matches(setup_identity(clip_config(moved, tmp_path), "winclip", {"category": "screw"}), path)
    official = clip_config(moved, tmp_path).updated({"scoring.normalise": "minmax"})
    assert setup_identity(official, "winclip", {})["settings"] == setup_identity(clip_config(moved, tmp_path), "winclip", {})["settings"]


@pytest.mark.parametrize("content, message", [
    ("not json", "is not readable JSON"),
    ('{"format": "other"}', "is not an iapas thresholds file"),
    ('{"format": "iapas-thresholds", "version": 9}', "has version 9"),
    ('{"format": "iapas-thresholds", "version": 1, "method": "winclip", "settings": {}, "models": {}, "score_scale": {}}',
     "neither an image nor a pixel threshold"),
    ('{"format": "iapas-thresholds", "version": 1, "method": "winclip", "settings": {}, "models": {}, "score_scale": {},'
     ' "image_threshold": {"value": "high", "source": "manual"}}', "value must be a finite number"),
])
def test_bad_thresholds_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(DecisionError, match=message):
        ThresholdsFile.load(path)
    with pytest.raises(DecisionError, match="not found"):
        ThresholdsFile.load(tmp_path / "absent.json")


def test_official_recipe_refuses_an_image_threshold():
    from iapas.decisions.thresholds_file import refuse_per_image_normalisation

    with pytest.raises(DecisionError, match="min-max normalises every map per image"):
        refuse_per_image_normalisation(Config().updated({"scoring.normalise": "minmax"}), "iapas")
    refuse_per_image_normalisation(Config().updated({"scoring.normalise": "minmax"}), "winclip")  # its maps are not
