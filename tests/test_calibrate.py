import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.backends.taggers import TAGGERS, TaggerSpec
from iapas.calibration import Calibration, load_calibration
from iapas.cli import main
from iapas.errors import ConfigError
from iapas.methods.iapas.preprocess import select_images
from iapas.stages.calibration import SizeThresholdStage, size_threshold_from_ratios
from iapas.stages.tagging import TagStage


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from iapas.weights.demo import build_demo_clip

    return build_demo_clip(tmp_path_factory.mktemp("clip") / "clip-vit-base-patch16")


@pytest.fixture
def fixed_pipeline(pipeline, tmp_path):
    """The session pipeline's models with the fixed tagger and a private LLM cache."""
    from iapas import Pipeline

    config = pipeline.config.updated({"calibration.tagger": "fixed", "calibration.cache_dir": str(tmp_path / "cache")})
    return Pipeline(config, pipeline.detector, pipeline.segmenter)


@pytest.fixture(scope="module")
def normal_dir(tmp_path_factory):
    from iapas.data.synth import synth_sample

    folder = tmp_path_factory.mktemp("normal")
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(synth_sample("washer", None, rng, 96)[0]).save(folder / f"{index:02d}.png")
    return folder


def test_seed_makes_the_choice_reproducible():
    paths = [Path(f"/x/{i:02d}.png") for i in range(20)]
    first = select_images(paths, 3, 111)
    assert first == select_images(list(reversed(paths)), 3, 111)  # independent of listing order
    assert first != select_images(paths, 3, 112)
    assert len(set(first)) == 3 and select_images(paths[:2], 3, 111) == paths[:2]


def test_size_rule_on_hand_made_ratios():
    assert size_threshold_from_ratios([0.3, 0.45, 0.2], cap=0.8) == (0.45, 0.45)
    assert size_threshold_from_ratios([0.97, 0.5], cap=0.8) == (0.8, 0.97)
    assert size_threshold_from_ratios([], cap=0.8) == (0.8, None)


def test_size_stage_uses_the_largest_detected_box(pipeline):
    images = [np.random.default_rng(i).integers(0, 256, (64, 80, 3), dtype=np.uint8) for i in range(2)]
    stage = SizeThresholdStage(pipeline.detector, 0.2, 0.2, cap=0.8)
    produced = stage.run(images, ("washer",))
    # measured on the boxes cut to the image: a box reaching past it covers no more than the whole image
    largest = [pipeline.detector.detect(im, ("washer",), 0.2, 0.2).clamped(64, 80).areas().max() / (64 * 80) for im in images]
    assert max(largest) <= 1.0
    assert produced["object_size"] == pytest.approx(max(largest))
    assert produced["size_threshold"] == pytest.approx(min(max(largest), 0.8))
    assert stage.run(images, ()) == {"size_threshold": 0.8, "object_size": None}


def test_clip_tagger_through_the_real_loader(clip_dir):
    vocabulary = ("metal", "scratch", "wood", "fabric", "crack", "glass")
    tagger = TAGGERS.get("clip")(TaggerSpec("clip", str(clip_dir), top_k=6, vocabulary=vocabulary))
    images = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8) for i in range(2)]
    probabilities = tagger.scores(images)
    assert probabilities.shape == (6,) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert tagger.tag(images) == tuple(vocabulary[i] for i in np.argsort(-probabilities, kind="stable"))
    tags = TagStage(tagger).run(images)["tags"]
    assert set(tags) == {"metal", "wood", "fabric", "glass"}  # defect words never become tags
    top2 = TAGGERS.get("clip")(TaggerSpec("clip", str(clip_dir), top_k=2, vocabulary=vocabulary)).tag(images)
    assert top2 == tagger.tag(images)[:2]


def test_calibrate_end_to_end_and_round_trip(fixed_pipeline, normal_dir, tmp_path):
    pipeline = fixed_pipeline
    calibration = pipeline.calibrate(normal_dir, category="metal_nut")
    assert calibration.tags == ("metal nut",) and calibration.kind == "object"
    assert calibration.box_threshold == calibration.text_threshold == 0.2
    assert calibration.p_adj[:3] == ("scratch", "dent", "rust")
    assert calibration.p_final[:2] == ("abnormal", "defect") and calibration.p_final[-1] == "metal nut"
    assert len(set(calibration.p_final)) == len(calibration.p_final)
    assert 0 < calibration.size_threshold <= 0.8 and len(calibration.normal_images) == 3
    assert calibration.models["llm"] == "lexicon:v1" and calibration.template["name"] == "iap_v1"
    path = calibration.save(tmp_path / "calib.json")
    assert load_calibration(path) == calibration
    # the same seed picks the same images; the texture kind sets the paper's 0.1 thresholds
    again = pipeline.calibrate(normal_dir, category="carpet")
    assert again.normal_images == calibration.normal_images and again.kind == "texture" and again.box_threshold == 0.1


def test_auto_tagger_uses_the_clip_in_the_weights_dir(pipeline, normal_dir, tmp_path):
    from iapas.vocabulary import defect_words, tag_vocabulary

    config = pipeline.config.updated({"calibration.cache_dir": str(tmp_path / "cache")})
    calibration = type(pipeline)(config, pipeline.detector, pipeline.segmenter).calibrate(normal_dir, category="washer")
    assert calibration.models["tagger"] == "clip:clip-demo"
    assert 0 < len(calibration.tags) <= 4 and set(calibration.tags) <= set(tag_vocabulary())
    assert not set(calibration.tags) & defect_words()


def test_ablations_remove_tagging_and_llm(fixed_pipeline, normal_dir):
    pipeline = fixed_pipeline
    no_llm = pipeline.calibrate(normal_dir, category="washer", ablate=["llm"])
    assert no_llm.p_adj == () and no_llm.p_final == ("abnormal", "defect", "washer") and no_llm.llm_answer == ""
    nothing = pipeline.calibrate(normal_dir, category="washer", ablate=["llm", "tagging"])
    assert nothing.p_final == ("abnormal", "defect") and nothing.size_threshold == 0.8 and nothing.object_size is None
    with pytest.raises(ConfigError, match="cannot ablate 'filter'"):
        pipeline.calibrate(normal_dir, category="washer", ablate=["filter"])


def test_segment_uses_the_calibration(pipeline):
    calibration = Calibration(
        tags=("washer",), llm_answer="", p_adj=("dent",), p_final=("abnormal", "dent"), size_threshold=0.0,
        object_size=None, box_threshold=0.1, text_threshold=0.1, kind="texture",
    )
    image = np.random.default_rng(3).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    result = pipeline.segment(image, calibration=calibration)
    assert result.prompts == ("abnormal", "dent") and len(result.boxes) == 0  # S_threshold 0 keeps nothing
    loose = pipeline.segment(image, calibration=calibration, size_threshold=1.0)
    assert len(loose.boxes) > 0 and loose.boxes.scores.min() > 0.1


def test_cli_calibrate_show_and_segment(capsys, weights_dir, normal_dir, tmp_path):
    calib = tmp_path / "calib.json"
    code = main(["calibrate", str(normal_dir), "--weights", str(weights_dir), "--category", "washer", "-o", str(calib),
                 "--cache-dir", str(tmp_path / "c"), "--n-images", "2", "--seed", "5", "--tagger", "fixed"])
    out, err = capsys.readouterr()
    assert code == 0 and "P_final" in out
    data = json.loads(calib.read_text())
    assert data["seed"] == 5 and len(data["normal_images"]) == 2 and data["tags"] == ["washer"]
    assert main(["calibrate", "--show", str(calib)]) == 0 and "S_threshold" in capsys.readouterr().out
    image = next(normal_dir.glob("*.png"))
    code = main(["segment", str(image), "--calibration", str(calib), "-o", str(tmp_path / "o"), "--weights",
                 str(weights_dir), "--no-progress"])
    capsys.readouterr()
    record = json.loads((tmp_path / "o" / f"{image.name}.json").read_text())
    assert code == 0 and record["prompts"] == data["p_final"] and record["calibration"] == str(calib)


@pytest.mark.parametrize("argv, message", [
    (["calibrate"], "calibrate needs NORMAL_DIR"),
    (["calibrate", "/no/such/dir"], "normal-image folder not found"),
    (["calibrate", "--show", "/no/calib.json"], "calibration file not found"),
])
def test_cli_calibrate_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_auto_tagger_without_clip_falls_back_to_the_category(capsys, weights_dir, normal_dir, tmp_path):
    import shutil

    no_clip = tmp_path / "w"
    shutil.copytree(weights_dir, no_clip, ignore=shutil.ignore_patterns("clip-demo"))
    code = main(["calibrate", str(normal_dir), "--weights", str(no_clip), "--category", "metal_nut", "-o", str(tmp_path / "c.json"),
                 "--cache-dir", str(tmp_path / "c")])
    assert code == 0 and "note: no CLIP model" in capsys.readouterr().err
    assert json.loads((tmp_path / "c.json").read_text())["tags"] == ["metal nut"]


def test_fixed_tagger_needs_tags(capsys, weights_dir, normal_dir, tmp_path):
    code = main(["calibrate", str(normal_dir), "--weights", str(weights_dir), "--tagger", "fixed", "-o", str(tmp_path / "c.json")])
    assert code == 2 and "needs --tags or --category" in capsys.readouterr().err


def test_ram_tagger_errors_are_one_line(capsys, weights_dir, normal_dir, tmp_path):
    base = ["calibrate", str(normal_dir), "--weights", str(weights_dir), "--tagger", "ram", "-o", str(tmp_path / "c.json")]
    assert main(base + ["--tagger-weights", str(tmp_path / "ram_swin_large_14m.pth")]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert error.startswith("iapas: error: RAM weights not found") and "ram_swin_large_14m.pth" in error
    checkpoint = tmp_path / "ram.pth"
    checkpoint.write_bytes(b"not really")
    assert main(base + ["--tagger-weights", str(checkpoint)]) == 2  # iapas's own RAM reads the file: not a checkpoint
    [error] = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert error.startswith("iapas: error: cannot read checkpoint") and "ram.pth" in error and not (tmp_path / "c.json").exists()
