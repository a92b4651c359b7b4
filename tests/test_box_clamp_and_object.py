"""Where boxes are cut to the image (the recipes' detection.box_clamp), and what decided the size filter in the results.

The official code (github sybeam27/IAP-ZSAS utils/function.py) measures NMS and the object size on boxes as
Grounding DINO predicts them and clamps only before SAM (process_anomaly_segmentation); the iapas recipe clamps
as boxes are detected. A hand-made object box reaching past the image tells the two apart.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from iapas import Pipeline
from iapas.config import build_config
from iapas.types import Boxes
from cli_runner import error_lines, run
from scripted_detector import ScriptedDetector  # defects first, then the object pass

IMAGE = np.zeros((100, 100, 3), np.uint8)
# the object box reaches 50 px past the top and left edges: 2.25 of the image as predicted, 1.0 once cut
OBJECT = Boxes([[-50, -50, 100, 100]], [0.9], ("washer",))
# a defect inside the image (0.81 of it) and one reaching past the bottom-right corner (0.49 as predicted, 0.16 cut)
DEFECTS = Boxes([[0, 0, 90, 90], [60, 60, 130, 130]], [0.5, 0.4], ("scratch", "dent"))


@dataclass
class BoxMaskSegmenter:
    """Each box's pixels as its mask; records the boxes it was handed (what SAM would have been given)."""

    handed: list = field(default_factory=list)

    def segment_boxes(self, image, xyxy):
        self.handed.append(np.array(xyxy))
        masks = np.zeros((len(xyxy), *image.shape[:2]), bool)
        for mask, (x0, y0, x1, y1) in zip(masks, np.round(xyxy).astype(int)):
            mask[y0:y1, x0:x1] = True
        return masks


def segment_under(recipe: str, **overrides):
    config = build_config(recipe).updated({"calibration.tags": ["washer"], "filtering.size_rule": "object-per-image",
                                           **overrides})
    segmenter = BoxMaskSegmenter()
    pipeline = Pipeline(config, ScriptedDetector([DEFECTS, OBJECT]), segmenter)
    return pipeline.segment(IMAGE, prompts=["scratch", "dent"]), segmenter


def test_official_order_measures_the_object_as_predicted_and_clamps_before_sam():
    result, segmenter = segment_under("official")
    assert result.object_size == pytest.approx(2.25)  # 150 x 150 px over 100 x 100
    assert result.size_limit == pytest.approx(0.8 * 2.25)
    np.testing.assert_array_equal(result.object_box.xyxy, [[-50, -50, 100, 100]])  # kept as predicted
    # both defects are below 0.8 x 2.25; SAM got them cut to the image, and the Result holds what SAM got
    np.testing.assert_array_equal(segmenter.handed[0], [[0, 0, 90, 90], [60, 60, 100, 100]])
    np.testing.assert_array_equal(result.boxes.xyxy, segmenter.handed[0])
    assert result.masks.areas().tolist() == [8100, 1600]


def test_iapas_order_clamps_at_detection():
    result, segmenter = segment_under("iapas")
    assert result.object_size == pytest.approx(1.0)
    np.testing.assert_array_equal(result.object_box.xyxy, [[0, 0, 100, 100]])
    # 0.81 is not below 0.8 x 1.0; the corner box is 0.16 of the image once cut, and kept
    np.testing.assert_array_equal(result.boxes.xyxy, [[60, 60, 100, 100]])
    np.testing.assert_array_equal(segmenter.handed[0], [[60, 60, 100, 100]])


def test_clamp_order_changes_nms_too():
    """Two boxes that overlap by IoU 0.33 as predicted but 0.6 once cut: NMS (IoU 0.5) keeps both only in the official order."""
    inside = [[0, 0, 80, 100], [20, 0, 100, 100]]  # IoU 6000 / 10000 = 0.6 inside the image
    past = Boxes([[-40, 0, 80, 100], [20, 0, 140, 100]], [0.5, 0.4])  # as predicted: 6000 / 18000 = 0.33
    for recipe, kept in (("official", 2), ("iapas", 1)):
        pipeline = Pipeline(build_config(recipe), ScriptedDetector([past]), BoxMaskSegmenter())
        pipeline.graph = pipeline.graph.without("size_filter")
        result = pipeline.segment(IMAGE, prompts=["scratch"])
        np.testing.assert_array_equal(result.boxes.xyxy, inside[:kept])
        assert result.object_box is None and result.object_size is None and result.size_limit is None


def test_unknown_clamp_rule_is_one_line():
    from iapas.errors import IapasError

    config = build_config("iapas").updated({"detection.box_clamp": "sometimes"})
    with pytest.raises(IapasError, match="unknown box clamp rule 'sometimes'"):
        Pipeline(config, ScriptedDetector([]), BoxMaskSegmenter())


def test_refinement_eps_is_range_checked():
    from iapas.errors import ValueRangeError

    for bad in (0.0, 0.5, float("nan"), -1e-3):
        with pytest.raises(ValueRangeError, match="detection.refinement_eps"):
            build_config("iapas").updated({"detection.refinement_eps": bad})
    assert build_config("official").detection.refinement_eps == build_config("iapas").detection.refinement_eps == 1e-3


def test_segment_writes_tags_object_size_and_full_precision(weights_dir, tmp_path, capsys):
    """`segment --tags` reaches the size rule; the JSON holds the object and boxes exactly as the Result has them."""
    from PIL import Image

    from iapas.data.synth import synth_sample

    image = synth_sample("washer", "scratch", np.random.default_rng(3), 96)[0]
    Image.fromarray(image).save(tmp_path / "part.png")
    code, _, err = run(capsys, "segment", tmp_path / "part.png", "-o", tmp_path / "out", "--weights", weights_dir,
                       "--recipe", "official", "--tags", "Washer", "--prompt", "scratch", "--no-progress")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "part.png.json").read_text())
    config = build_config("official").updated({"calibration.tags": ["Washer"]})
    expected = Pipeline.from_pretrained(weights_dir, config).segment(image, prompts=["scratch"])
    assert record["object"]["tags"] == ["Washer"] and record["object"]["size"] == expected.object_size
    assert record["object"]["size_limit"] == expected.size_limit
    if expected.object_box is None:
        assert record["object"]["box"] is None
    else:
        assert np.array_equal(np.float32(record["object"]["box"]), expected.object_box.xyxy[0])
    boxes = np.float32([box["xyxy"] for box in record["boxes"]]).reshape(-1, 4)
    assert np.array_equal(boxes, expected.boxes.xyxy)  # not rounded: float32 values round-trip exactly
    assert np.array_equal(np.float32([box["score"] for box in record["boxes"]]), expected.boxes.scores)


def test_tags_refused_for_clip_methods(weights_dir, tmp_path, capsys):
    from conftest import write_rgb

    code, _, err = run(capsys, "segment", write_rgb(tmp_path / "a.png"), "-o", tmp_path / "out", "--weights", weights_dir,
                       "--method", "winclip", "--tags", "washer")
    assert code == 2 and error_lines(err) == ["iapas: error: --tags is IAP-AS's object tag for the size rule; --method winclip does not use it"]
