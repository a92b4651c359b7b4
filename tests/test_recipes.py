"""Recipes and the official rules, each on hand-computed cases; the reference detection rule on controlled logits."""
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from iapas.backends.grounding_dino import CaptionTokens, boxes_from_logits
from iapas.backends.taggers import FixedTagger
from iapas.cli import main
from iapas.config import Config, build_config, recipe_names, recipe_settings
from iapas.errors import ConfigError
from iapas.methods.iapas.prompting import OfficialMessages, official_clean
from iapas.stages.detection import official_caption
from iapas.stages.filtering import ObjectSizeFilterStage, object_size
from iapas.stages.scoring import anomaly_map
from iapas.stages.tagging import TopOneTagStage, official_tag_caption, top_phrase
from iapas.types import Boxes, Masks

# ---------------------------------------------------------------- recipes


def test_shipped_recipes_and_the_default():
    assert recipe_names() == ["iapas", "official"]
    assert build_config("iapas").to_dict() == Config().to_dict()  # the iapas recipe is exactly the defaults
    official = build_config("official")
    assert (official.recipe, official.recipe_version) == ("official", 1)
    assert (official.detection.box_threshold, official.detection.text_threshold, official.filtering.nms_iou) == (0.1, 0.1, 0.5)
    assert official.filtering.size_rule == "object-per-image" and official.scoring.normalise == "minmax"
    assert (official.calibration.n_images, official.calibration.seed, official.calibration.normal_split) == (10, 111, "test")
    assert (official.calibration.llm_temperature, official.calibration.llm_top_p, official.calibration.llm_max_new_tokens) == (
        0.6, 0.9, 512)
    # every key a recipe sets is a real setting (config_from_dict rejects unknown ones)
    for name in recipe_names():
        assert set(recipe_settings(name)) <= set(Config().to_dict())


def test_config_file_over_a_recipe_and_unknown_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: official\ndetection:\n  box_threshold: 0.3\n")
    from iapas.config import load_config

    config = load_config(path)
    assert config.recipe == "official" and config.detection.box_threshold == 0.3 and config.detection.text_threshold == 0.1
    with pytest.raises(ConfigError, match="unknown recipe 'paper' \\(shipped: iapas, official\\)"):
        build_config("paper")
    with pytest.raises(ConfigError, match="names recipe 'official' but --recipe is 'iapas'"):
        load_config(path, recipe="iapas")


def test_cli_config_show_recipe(capsys):
    import yaml

    assert main(["config", "show", "--recipe", "official"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["recipe"] == "official" and shown["scoring"] == {"normalise": "minmax"}
    assert shown["detection"]["caption_format"] == "official"
    with pytest.raises(SystemExit) as raised:
        main(["config", "show", "--recipe", "nope"])
    assert raised.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- detection on controlled logits

#          [CLS] scratch  .  dent  ,  washer  .  [SEP]  -> the official caption ". scratch. dent, washer." shortened
TOKENS = ["[CLS]", "scratch", ".", "dent", ",", "washer", ".", "[SEP]"]
CAPTION = CaptionTokens(
    input_ids=tuple(range(len(TOKENS))),
    special=tuple(t.startswith("[") for t in TOKENS),
    decode=lambda ids: " ".join(TOKENS[i] for i in ids),
)


def controlled_probabilities() -> torch.Tensor:
    """(5 queries, 256 positions); positions past the caption hold 0.99, which must never count."""
    p = torch.full((5, 256), 0.05)
    p[:, len(TOKENS):] = 0.99
    p[0, 5], p[0, 3] = 0.7, 0.3  # "washer" 0.7, "dent" 0.3
    p[1, 1] = 0.15  # below the box threshold everywhere
    p[2, 7] = 0.5  # only [SEP] is high: the max is over the whole caption, so it is kept
    p[3, 0] = 0.9  # only [CLS]: kept, but position 0 never names a box
    p[4, 1], p[4, 2] = 0.4, 0.35  # "scratch" and the "." after it
    return p


BOXES = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 0.1, 0.1], [0.95, 0.5, 0.2, 0.2], [0.1, 0.1, 0.4, 0.4],
                      [0.25, 0.75, 0.1, 0.1]])


def test_reference_rule_keeps_scores_and_names_boxes_by_caption_tokens():
    boxes = boxes_from_logits(controlled_probabilities(), BOXES, CAPTION, 0.2, 0.25, height=100, width=200, phrase_rule="words")
    np.testing.assert_allclose(boxes.scores, [0.7, 0.5, 0.9, 0.4])  # query 1 (max 0.15) is gone
    np.testing.assert_allclose(boxes.xyxy[0], [80, 30, 120, 70])  # (cx, cy, w, h) x (200, 100, 200, 100)
    # x1 = 210 past the width: kept as predicted (the recipe's box_clamp cuts it later)
    np.testing.assert_allclose(boxes.xyxy[1], [170, 40, 210, 60], rtol=1e-6)
    np.testing.assert_allclose(boxes.xyxy[2], [-20, -10, 60, 30])  # x0, y0 before the image: as predicted too
    assert boxes.phrases == ("dent washer", "", "", "scratch")  # [SEP], [CLS] and '.' do not name a box
    tokens = boxes_from_logits(controlled_probabilities(), BOXES, CAPTION, 0.2, 0.25, 100, 200, phrase_rule="tokens")
    assert tokens.phrases == ("dent washer", "[SEP]", "", "scratch .")  # decoded as the official code decodes them
    # --text-threshold matters: at 0.5 only "washer" names query 0, and query 4 loses its name
    strict = boxes_from_logits(controlled_probabilities(), BOXES, CAPTION, 0.2, 0.5, 100, 200, phrase_rule="words")
    assert strict.phrases == ("washer", "", "", "")


def test_reference_rule_equals_transformers_post_processing(weights_dir):
    """The same logits through transformers' post_process_grounded_object_detection and through ours."""
    from transformers import AutoProcessor
    from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoObjectDetectionOutput

    from iapas.weights.manifest import find_weights

    processor = AutoProcessor.from_pretrained(find_weights("detector", weights_dir)[1], local_files_only=True)
    ids = processor.tokenizer(". scratch. dent, metal.")["input_ids"]
    assert len(ids) == 9 and 1 not in ids  # [CLS] . scratch . dent , metal . [SEP], no [UNK]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 12, 256, generator=generator) * 2
    logits[:, :, len(ids):] = float("-inf")  # padding, as the model writes it
    pred_boxes = torch.rand(1, 12, 4, generator=generator) * 0.3 + 0.3  # inside the image: transformers does not clamp
    outputs = GroundingDinoObjectDetectionOutput(logits=logits, pred_boxes=pred_boxes)
    expected = processor.post_process_grounded_object_detection(
        outputs, input_ids=torch.tensor([ids]), threshold=0.93, text_threshold=0.6, target_sizes=[(90, 120)])[0]
    special = set(processor.tokenizer.all_special_ids)
    caption = CaptionTokens(tuple(ids), tuple(i in special for i in ids), lambda t: processor.tokenizer.decode(t))
    ours = boxes_from_logits(logits[0].sigmoid(), pred_boxes[0], caption, 0.93, 0.6, 90, 120, phrase_rule="tokens")
    assert 2 <= len(ours) < 12 and any(ours.phrases)
    np.testing.assert_allclose(ours.scores, expected["scores"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.xyxy, expected["boxes"].numpy(), rtol=1e-5)
    assert list(ours.phrases) == [label.strip() for label in expected["text_labels"]]


# ---------------------------------------------------------------- official rules, hand-computed


def test_official_caption_and_tag_caption():
    nouns = official_clean("scratch, dent")
    assert nouns == ("scratch", "dent", "abnormal", "defect")
    assert official_caption((*nouns, "washer")) == ". scratch. dent. abnormal. defect, washer."
    assert official_caption(("Washer",)) == "washer."
    # RAM's "a | b | c" with process_single_image's edits, then get_grounding_output's '.'
    assert official_tag_caption(("close-up", "metal", "screw")) == ". metal. screw."
    assert official_tag_caption(("number", "screw")) == "screw."


@pytest.mark.parametrize("answer, add_fixed, expected", [
    ("scratch, dent, scratch", True, ("scratch", "dent", "abnormal", "defect")),
    ("Scratch, dent, crack of the part, none, wordy hole hole.", False, ("Scratch", "dent", "crack the", "y hole")),
    ("rust. stain, chip,, ", False, ("rust stain", "chip")),
    ("", True, ("abnormal", "defect")),
    (None, False, ()),
])
def test_official_answer_cleaning(answer, add_fixed, expected):
    assert official_clean(answer, add_fixed) == expected


def test_official_messages_per_object_tag():
    messages = OfficialMessages.load().render("metal nut")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "'word, word'" in messages[0]["content"] and "lowercase" in messages[0]["content"]
    assert messages[1]["content"].count("metal nut") == 2 and "object detection model" in messages[1]["content"]


def test_top_one_phrase_over_images():
    # per image (phrase, score) of its top box; "screw" is best at 0.7, tied with "bolt": alphabetical order decides
    assert top_phrase([("screw", 0.4), ("metal", 0.6), ("screw", 0.7), ("bolt", 0.7), ("", 0.95)]) == "bolt"
    assert top_phrase([("screw", 0.4), ("metal", 0.6)]) == "metal"
    assert top_phrase([("", 0.9)]) is None


@dataclass
class ScriptedDetector:
    """Returns given boxes per caption: lets a test set what Grounding DINO 'found' and check what it was asked."""

    answers: list
    asked: list = field(default_factory=list)

    def fits(self, caption):
        return True

    def detect_captions(self, image, captions, box_threshold, text_threshold, phrase_rule="words"):
        self.asked.append((tuple(captions), box_threshold, text_threshold))
        return self.answers.pop(0)


def test_top_one_tag_stage_over_several_images():
    images = [np.zeros((10, 10, 3), np.uint8)] * 3
    per_image = [
        Boxes([[0, 0, 5, 5], [0, 0, 5, 6]], [0.5, 0.6], ("metal", "metal screw")),  # NMS drops the 0.5 box; top 0.6
        Boxes([[0, 0, 9, 9]], [0.55], ("screw",)),
        Boxes.empty(),  # nothing found on the third image
    ]
    detector = ScriptedDetector(per_image)
    stage = TopOneTagStage(FixedTagger(["close-up", "metal", "screw"]), detector, 0.1, 0.1, 0.5, fallback=("washer",))
    assert stage.run(images) == {"tags": ("metal screw",)}
    assert [a[0] for a in detector.asked] == [(". metal. screw.",)] * 3 and detector.asked[0][1:] == (0.1, 0.1)
    empty = TopOneTagStage(FixedTagger(["metal"]), ScriptedDetector([Boxes.empty()]), 0.1, 0.1, 0.5, fallback=("washer",))
    assert empty.run(images[:1]) == {"tags": ("washer",)}  # no box on any image: the category name


def test_per_image_object_size_and_the_08_rule():
    image = np.zeros((100, 100, 3), np.uint8)
    # object boxes: the top-SCORING one (0.25 of the image) is the object, not the largest (1.0)
    objects = Boxes([[0, 0, 50, 50], [0, 0, 100, 100]], [0.9, 0.5], ("washer", "washer"))
    assert object_size(objects, 100, 100, 0.5) == pytest.approx(0.25)
    anomalies = Boxes([[0, 0, 19, 100], [0, 0, 20, 100], [0, 0, 50, 100]], [0.3, 0.4, 0.5])  # ratios 0.19, 0.20, 0.50
    detector = ScriptedDetector([objects])
    stage = ObjectSizeFilterStage(detector, factor=0.8, iou_threshold=0.5)
    result = stage.run(anomalies, image, ("washer",), 0.1, 0.1)
    assert result["object_size"] == pytest.approx(0.25)
    np.testing.assert_allclose(result["boxes"].scores, [0.3])  # 0.19 < 0.8 x 0.25 = 0.2; 0.20 is not below it
    assert detector.asked == [(("washer.",), 0.1, 0.1)]  # the object tag alone, in the official caption format


def test_empty_cases_no_object_box_and_no_anomaly_box():
    image = np.zeros((100, 100, 3), np.uint8)
    anomalies = Boxes([[0, 0, 89, 100], [0, 0, 90, 100]], [0.3, 0.4])  # ratios 0.89 and 0.90
    stage = ObjectSizeFilterStage(ScriptedDetector([Boxes.empty()]), factor=0.9, iou_threshold=0.5)
    result = stage.run(anomalies, image, ("washer",), 0.1, 0.1)
    # no object box: the object is taken as the whole image, so the rule is "ratio < 0.9 x 1.0"
    assert result["object_size"] is None and list(result["boxes"].scores) == pytest.approx([0.3])
    no_tags = ObjectSizeFilterStage(ScriptedDetector([]), factor=0.9, iou_threshold=0.5).run(anomalies, image, (), 0.1, 0.1)
    assert no_tags["object_size"] is None and len(no_tags["boxes"]) == 1
    # no anomaly box: an all-zero map under both normalisations
    for rule in ("clip", "minmax"):
        assert not anomaly_map(Masks.empty(4, 4), np.zeros(0), 4, 4, rule).any()


def test_per_image_min_max_normalisation():
    first = np.zeros((2, 3), bool)
    first[0, :2] = True
    second = np.zeros((2, 3), bool)
    second[0, 1:] = True
    masks = Masks(np.stack([first, second]))
    # sums: [[0.6, 0.9, 0.3], [0, 0, 0]] -> min-max -> [[2/3, 1, 1/3], [0, 0, 0]]; clip keeps 0.6, 0.9, 0.3
    np.testing.assert_allclose(anomaly_map(masks, np.array([0.6, 0.3]), 2, 3, "minmax"), [[2 / 3, 1, 1 / 3], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(anomaly_map(masks, np.array([0.6, 0.3]), 2, 3, "clip"), [[0.6, 0.9, 0.3], [0, 0, 0]], rtol=1e-6)
    whole = Masks(np.ones((1, 2, 3), bool))
    assert not anomaly_map(whole, np.array([0.6]), 2, 3, "minmax").any()  # a constant map becomes zeros


# ---------------------------------------------------------------- end to end on the demo Grounding DINO


def test_official_recipe_end_to_end(weights_dir, tmp_path):
    from iapas import Pipeline
    from iapas.data.synth import synth_sample
    from iapas.stages.filtering import ObjectSizeFilterStage as PerImage

    pipeline = Pipeline.from_pretrained(weights_dir, recipe="official")
    assert pipeline.config.recipe == "official" and isinstance(pipeline.graph.stages[2], PerImage)
    assert pipeline.graph.names == ["detection", "nms", "size_filter", "masking", "scoring"]
    rng = np.random.default_rng(0)
    normal = tmp_path / "normal"
    normal.mkdir()
    from PIL import Image

    for index in range(3):
        Image.fromarray(synth_sample("washer", None, rng, 64)[0]).save(normal / f"{index}.png")
    config = pipeline.config.updated({"calibration.tagger": "fixed", "calibration.tags": ["metal", "washer"],
                                      "calibration.cache_dir": str(tmp_path / "cache")})
    official = Pipeline(config, pipeline.detector, pipeline.segmenter)
    calibration = official.calibrate(normal, category="washer")
    assert calibration.recipe == "official" and len(calibration.tags) == 1 and calibration.tags[0]
    tag = calibration.tags[0].lower()  # the decoded phrase; captions are lower-cased (get_grounding_output)
    assert calibration.p_final[-1] == tag and {"abnormal", "defect"} <= set(calibration.p_final)
    assert (calibration.box_threshold, calibration.text_threshold) == (0.1, 0.1)
    assert calibration.template["name"] == "official-messages-v1"
    before = official.detector.backbone_runs
    result = official.segment(np.asarray(Image.open(normal / "0.png")), calibration=calibration)
    # one encoding serves P_final's captions and the object tag's (the size rule asks about the same image again)
    assert official.detector.backbone_runs - before == 1
    heat = result.anomaly_map
    assert heat.dtype == np.float32 and heat.min() >= 0 and heat.max() <= 1
    assert heat.max() in (0.0, 1.0)  # per-image min-max: the top is 1 unless the map is empty or constant
    assert result.prompts[-1] == tag


def test_cli_eval_with_the_official_recipe(capsys, weights_dir, tmp_path):
    from iapas.data.synth import SynthSpec, write_synth_dataset

    root = write_synth_dataset(tmp_path / "synth", SynthSpec(categories=("washer",), defects=("scratch",), train_good=2,
                                                               test_good=2, per_defect=2, size=48, seed=3))
    out = tmp_path / "results"
    argv = ["eval", "--dataset", "mvtec", "--root", str(root), "-o", str(out), "--weights", str(weights_dir), "--no-progress",
            "--cache-dir", str(tmp_path / "c"), "--recipe", "official", "--tagger", "fixed"]
    assert main(argv) == 0
    capsys.readouterr()
    run_dir = out / "iapas-official"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["recipe"] == "official" and info["config"]["calibration"]["normal_split"] == "test"
    calibration = json.loads((run_dir / "calibrations" / "washer.json").read_text())
    # the official recipe calibrates on the test split's normal images (MVTec test/good), as the official code does
    assert calibration["recipe"] == "official" and all("/test/good/" in p for p in calibration["normal_images"])


def test_cli_calibrate_and_segment_with_the_official_recipe(capsys, weights_dir, tmp_path):
    from PIL import Image

    from iapas.data.synth import synth_sample

    normal = tmp_path / "normal"
    normal.mkdir()
    rng = np.random.default_rng(1)
    for index in range(2):
        Image.fromarray(synth_sample("washer", None, rng, 48)[0]).save(normal / f"{index}.png")
    common = ["--weights", str(weights_dir), "--recipe", "official"]
    assert main(["calibrate", str(normal), "--tagger", "fixed", "--tags", "washer", "--cache-dir", str(tmp_path / "c"),
                 "-o", str(tmp_path / "calib.json"), *common]) == 0
    assert main(["calibrate", "--show", str(tmp_path / "calib.json")]) == 0
    shown = capsys.readouterr().out
    assert "official" in shown and "official-messages-v1" in shown
    assert main(["segment", str(normal / "0.png"), "--calibration", str(tmp_path / "calib.json"), "-o", str(tmp_path / "out"),
                 "--no-progress", *common]) == 0
    record = json.loads((tmp_path / "out" / "0.png.json").read_text())
    assert record["prompts"][-1] == json.loads((tmp_path / "calib.json").read_text())["tags"][0].lower()
