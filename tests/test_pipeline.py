import numpy as np
import pytest
from PIL import Image

from iapas import Config, Pipeline
from iapas.errors import InputImageError
from iapas.stages import anomaly_map


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(5).integers(0, 256, (72, 104, 3), dtype=np.uint8)


def test_segment_returns_a_consistent_result(pipeline, image):
    result = pipeline.segment(image, prompts=["abnormal", "Defect", "defect ", "crack"])
    assert result.prompts == ("abnormal", "defect", "crack")  # lower-cased and deduplicated
    assert result.anomaly_map.shape == (72, 104) and result.anomaly_map.dtype == np.float32
    assert 0.0 <= result.anomaly_map.min() and result.anomaly_map.max() <= 1.0
    assert list(result.timings) == ["detection", "nms", "size_filter", "masking", "scoring"]
    assert len(result.masks) == len(result.boxes) > 0
    assert result.masks.data.shape[1:] == (72, 104)
    # the size filter held: every kept box is below 0.8 of the image
    assert np.all(result.boxes.areas() / (72 * 104) < 0.8)
    # the map is exactly sum(score x mask), clipped
    np.testing.assert_allclose(result.anomaly_map, anomaly_map(result.masks, result.boxes.scores, 72, 104))
    assert result.image_score == pytest.approx(float(result.anomaly_map.max()))


def test_size_threshold_zero_keeps_nothing(pipeline, image):
    result = pipeline.segment(image, size_threshold=0.0)
    assert len(result.boxes) == 0 and len(result.masks) == 0
    assert not result.anomaly_map.any()


def test_ablation_without_size_filter_keeps_large_boxes(pipeline, image):
    full = pipeline.segment(image, size_threshold=0.01)
    ablated_graph = pipeline.graph.without("size_filter")
    ablated = Pipeline(pipeline.config, pipeline.detector, pipeline.segmenter, ablated_graph).segment(image, size_threshold=0.01)
    assert "size_filter" not in ablated.timings
    assert len(ablated.boxes) >= len(full.boxes)
    assert np.any(ablated.boxes.areas() / (72 * 104) >= 0.01)


def test_box_threshold_one_keeps_nothing(weights_dir, image):
    strict = Pipeline.from_pretrained(weights_dir, Config().updated({"detection.box_threshold": 1.0}))
    assert len(strict.segment(image).boxes) == 0


def test_inputs_of_every_kind_give_the_same_map(pipeline, image, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    from_array = pipeline.segment(image).anomaly_map
    np.testing.assert_array_equal(pipeline.segment(path).anomaly_map, from_array)
    np.testing.assert_array_equal(pipeline.segment(Image.fromarray(image)).anomaly_map, from_array)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(pipeline.segment(rgba).anomaly_map, from_array)


def test_segment_batch_streams_and_keeps_going(pipeline, image, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(image).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    outcomes = list(pipeline.segment_batch([good, bad, good]))
    assert [type(o).__name__ for _, o in outcomes] == ["Result", "InputImageError", "Result"]


def test_hf_sam_in_the_pipeline(weights_dir, hf_sam_dir, image):
    config = Config().updated({"weights_dir": str(weights_dir), "masking.weights": str(hf_sam_dir)})
    result = Pipeline.from_config(config).segment(image)
    assert result.masks.data.shape[1:] == (72, 104)


def test_bad_arrays_are_rejected(pipeline):
    with pytest.raises(InputImageError, match="uint8"):
        pipeline.segment(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputImageError, match="shape"):
        pipeline.segment(np.zeros((10, 10, 2), np.uint8))


def test_max_boxes_keeps_the_detectors_best_boxes(pipeline, image):
    from iapas.stages import DetectStage

    everything = DetectStage(pipeline.detector).run(image, ("abnormal", "defect", "crack"), 0.0, 0.0)["boxes"]
    assert len(everything) > 3  # the demo detector at threshold 0 finds more than the cap
    capped = DetectStage(pipeline.detector, max_boxes=3).run(image, ("abnormal", "defect", "crack"), 0.0, 0.0)["boxes"]
    np.testing.assert_array_equal(capped.scores, np.sort(everything.scores)[::-1][:3])
    batched = DetectStage(pipeline.detector, max_boxes=3).run_batch(
        [{"image": image, "prompts": ("abnormal", "defect", "crack"), "box_threshold": 0.0, "text_threshold": 0.0}] * 2)
    for item in batched:
        np.testing.assert_allclose(item["boxes"].xyxy, capped.xyxy, atol=1e-4)
    capped_pipeline = Pipeline(pipeline.config.updated({"detection.max_boxes": 1}), pipeline.detector, pipeline.segmenter)
    assert len(capped_pipeline.segment(image, size_threshold=1.0).boxes) == 1
