"""The fast profile: SAM 2 / EdgeTAM segmenters, OmDet-Turbo detector, a smaller detector input, the profile preset."""
import numpy as np
import pytest
import torch

from iapas.backends import load_detector, load_segmenter
from iapas.backends.base import detector_backend_for, segmenter_backend_for, weights_family
from iapas.backends.omdet import HFOmDetTurbo, boxes_from_class_logits, classes_of
from iapas.backends.sam2 import HFSam2Family
from iapas.cli import main
from iapas.config import build_config, profile_names
from iapas.errors import ConfigError, ValueRangeError, WeightsError
from iapas.weights.manifest import find_weights

CPU = torch.device("cpu")
IMAGE = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)


@pytest.mark.parametrize("entry, backend, model_class", [
    ("sam2-demo", "hf-sam2", "Sam2Model"), ("edgetam-demo", "hf-edgetam", "EdgeTamModel")])
def test_sam2_family_masks_every_box_at_full_resolution(weights_dir, entry, backend, model_class, monkeypatch):
    import iapas.backends.sam2 as sam2_module

    found, path = find_weights("segmenter", weights_dir, weights_family(backend))
    assert found.name == entry
    assert segmenter_backend_for(path) == backend  # picked from config.json's model_type
    segmenter = load_segmenter("auto", path, CPU)
    assert isinstance(segmenter, HFSam2Family) and type(segmenter.model).__name__ == model_class
    boxes = np.array([[10, 10, 50, 60], [30, 20, 120, 90], [0, 0, 6, 6]], np.float32)
    masks = segmenter.segment_boxes(IMAGE, boxes)
    assert masks.shape == (3, 96, 128) and masks.dtype == bool
    alone = segmenter.segment_boxes(IMAGE, boxes[1:2])
    np.testing.assert_array_equal(alone[0], masks[1])  # batching does not change a box's mask
    monkeypatch.setattr(sam2_module, "BOX_CHUNK", 2)
    np.testing.assert_array_equal(segmenter.segment_boxes(IMAGE, boxes), masks)  # nor does decoding in chunks


def test_backend_is_read_from_the_directory(weights_dir, hf_sam_dir):
    assert segmenter_backend_for(hf_sam_dir) == "hf-sam"
    assert segmenter_backend_for(weights_dir / "demo" / "sam_demo.pth") == "sam"
    assert detector_backend_for(weights_dir / "demo" / "omdet-turbo-demo") == "omdet-turbo"
    assert detector_backend_for(weights_dir / "demo" / "grounding-dino-demo") == "hf-grounding-dino"
    assert isinstance(load_detector("auto", weights_dir / "demo" / "omdet-turbo-demo", CPU), HFOmDetTurbo)
    # an explicit backend finds only its own family; auto finds the first of the role, as before
    assert find_weights("detector", weights_dir, weights_family("omdet-turbo"))[0].name == "omdet-turbo-demo"
    assert find_weights("detector", weights_dir, weights_family("auto"))[0].name == "grounding-dino-demo"
    assert find_weights("segmenter", weights_dir)[0].name == "sam-demo"
    with pytest.raises(WeightsError, match="sam2.1-hiera-tiny"):
        find_weights("segmenter", weights_dir / "absent", "sam2")


def test_omdet_class_rule_by_hand():
    # 3 queries x 2 classes; probabilities sigmoid(logit)
    logits = torch.logit(torch.tensor([[0.9, 0.3], [0.1, 0.15], [0.4, 0.6]]))
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.95, 0.5, 0.2, 2.0]])
    found = boxes_from_class_logits(logits, boxes, ["crack", "scratch"], 0.2, 0.35, 100, 200)
    np.testing.assert_allclose(found.scores, [0.9, 0.6], rtol=1e-5)
    assert found.phrases == ("crack", "crack scratch")  # classes above the text threshold, in prompt order
    # as predicted, past the image (the detection stage clamps by the recipe's rule)
    np.testing.assert_allclose(found.xyxy, [[80, 30, 120, 70], [170, -50, 210, 150]], atol=1e-4)
    assert len(boxes_from_class_logits(logits, boxes, ["crack", "scratch"], 0.9, 0.1, 100, 200)) == 0  # strictly above


def test_classes_of_both_caption_formats():
    assert classes_of("abnormal . metal scratch . defect .") == ["abnormal", "metal scratch", "defect"]
    assert classes_of(". scratch. dent, washer.") == ["scratch", "dent", "washer"]
    assert classes_of("a . a .") == ["a"]


def test_omdet_detector_honours_thresholds(weights_dir):
    detector = load_detector("omdet-turbo", weights_dir / "demo" / "omdet-turbo-demo", CPU)
    prompts = ["crack", "scratch", "abnormal"]
    everything = detector.detect(IMAGE, prompts, 0.0, 0.0)
    assert len(everything) == detector.model.config.num_queries
    assert everything.xyxy.dtype == np.float32 and everything.xyxy.shape == (len(everything), 4)
    assert (everything.xyxy[:, [0, 2]] <= 128).all() and (everything.xyxy[:, [1, 3]] <= 96).all() and (everything.xyxy >= 0).all()
    assert set(everything.phrases) == {"crack scratch abnormal"}  # text threshold 0 names every class
    assert len(detector.detect(IMAGE, prompts, 1.0, 0.0)) == 0  # box threshold 1.0 keeps nothing
    unnamed = detector.detect(IMAGE, prompts, 0.0, 1.0)
    assert len(unnamed) == len(everything) and set(unnamed.phrases) == {""}
    middle = float(np.median(everything.scores))
    kept = detector.detect(IMAGE, prompts, middle, 0.0)
    np.testing.assert_array_equal(np.sort(kept.scores), np.sort(everything.scores[everything.scores > middle]))


def test_grounding_dino_input_size_sets_the_shortest_edge(weights_dir):
    from PIL import Image

    path = weights_dir / "demo" / "grounding-dino-demo"
    default = load_detector("hf-grounding-dino", path, CPU)
    small = load_detector("hf-grounding-dino", path, CPU, input_size=96)
    picture = Image.fromarray(IMAGE)
    assert default.processor.image_processor(images=picture, return_tensors="pt")["pixel_values"].shape[-2:] == (96, 128)
    shape = small.processor.image_processor(images=picture, return_tensors="pt", **small.pixel_options)["pixel_values"].shape
    assert shape[-2:] == (72, 96)  # the demo caps both edges at 128: shortest 96, longest cap 128 x 96 / 128
    boxes = small.detect(IMAGE, ["crack"], 0.0, 0.0)
    assert len(boxes) == small.model.config.num_queries and (boxes.xyxy[:, [0, 2]] <= 128).all()


def test_profile_is_a_preset_over_the_recipe():
    assert {"fast", "fast-edgetam", "fast-omdet"} <= set(profile_names())
    fast = build_config(profile="fast")
    assert (fast.profile, fast.masking.backend, fast.detection.backend, fast.detection.input_size) == ("fast", "hf-sam2", "hf-grounding-dino", 512)
    official = build_config("official", profile="fast")
    assert official.detection.box_threshold == 0.1 and official.masking.backend == "hf-sam2"  # the recipe's rules stay
    assert build_config(profile="fast-omdet").detection.backend == "omdet-turbo"
    assert build_config(data={"profile": "fast-edgetam"}).masking.backend == "hf-edgetam"
    assert build_config(data={"detection": {"input_size": 640}}, profile="fast").detection.input_size == 640  # file wins
    assert build_config().profile == "" and build_config().detection.input_size == 0
    with pytest.raises(ConfigError, match="unknown profile 'turbo'"):
        build_config(profile="turbo")
    with pytest.raises(ConfigError, match="names profile"):
        build_config(data={"profile": "fast"}, profile="fast-omdet")
    with pytest.raises(ValueRangeError, match="detection.input_size"):
        build_config(data={"detection": {"input_size": -1}})


def test_config_show_profile_and_bad_profile(capsys):
    assert main(["config", "show", "--profile", "fast"]) == 0
    shown = capsys.readouterr().out
    assert "profile: fast" in shown and "backend: hf-sam2" in shown and "input_size: 512" in shown
    with pytest.raises(SystemExit) as raised:
        main(["config", "show", "--profile", "turbo"])
    assert raised.value.code == 2 and "invalid choice: 'turbo'" in capsys.readouterr().err


@pytest.mark.parametrize("profile, detector_type, segmenter_model", [
    ("fast", "HFGroundingDino", "Sam2Model"), ("fast-edgetam", "HFGroundingDino", "EdgeTamModel"),
    ("fast-omdet", "HFOmDetTurbo", "Sam2Model")])
def test_pipeline_end_to_end_with_each_fast_family(weights_dir, profile, detector_type, segmenter_model):
    from iapas import Pipeline

    config = build_config(profile=profile).updated({"weights_dir": str(weights_dir), "detection.input_size": 96})
    pipeline = Pipeline.from_config(config)
    assert type(pipeline.detector).__name__ == detector_type
    assert type(pipeline.segmenter.model).__name__ == segmenter_model
    result = pipeline.segment(IMAGE, prompts=["crack", "scratch"], size_threshold=1.0)
    assert result.anomaly_map.shape == (96, 128) and result.anomaly_map.dtype == np.float32
    assert 0.0 <= result.anomaly_map.min() and result.anomaly_map.max() <= 1.0
    assert result.masks.data.shape == (len(result.boxes), 96, 128)


def test_cli_segment_with_fast_profile(capsys, weights_dir, tmp_path):
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    code = main(["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--weights", str(weights_dir),
                 "--profile", "fast-omdet", "--detector-input-size", "96", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert any((tmp_path / "out").rglob("*.png"))


def test_fast_download_profile_lists_each_family():
    from iapas.weights.download import load_sources, select_sources
    from iapas.weights.manifest import load_manifest

    manifest = {entry.name: entry for entry in load_manifest()}
    fast = select_sources([], "fast", load_sources())
    assert {source.hub for source in fast} == {"facebook/sam2.1-hiera-tiny", "yonigozlan/EdgeTAM-hf", "omlab/omdet-turbo-swin-tiny-hf"}
    assert {manifest[source.entry].family for source in fast} == {"sam2", "edgetam", "omdet-turbo"}
    assert all("config.json" in source.files and "model.safetensors" in source.files for source in fast)


def test_random_full_builds_the_configured_families(tmp_path, monkeypatch):
    import iapas.weights.random_full as random_full

    built = []

    def fake(name):
        def build(path, seed=0):
            built.append(name)
            path.mkdir(parents=True)
            (path / "config.json").write_text("{}")
            return path
        return build

    monkeypatch.setitem(random_full.RANDOM_DETECTORS, "omdet-turbo", ("omdet", fake("omdet")))
    monkeypatch.setitem(random_full.RANDOM_SEGMENTERS, "hf-sam2", ("sam2", fake("sam2")))
    assert random_full.random_full_models(tmp_path, "omdet-turbo", "hf-sam2") == (tmp_path / "omdet", tmp_path / "sam2")
    assert random_full.random_full_models(tmp_path, "omdet-turbo", "hf-sam2") == (tmp_path / "omdet", tmp_path / "sam2")
    assert built == ["omdet", "sam2"]  # built once, then found in the cache
    monkeypatch.setattr(random_full, "build_random_grounding_dino_tiny", fake("gdino"))
    monkeypatch.setattr(random_full, "build_random_sam_vit_b", lambda path: built.append("sam") or path)
    random_full.random_full_models(tmp_path, "auto", "auto")
    assert built[2:] == ["gdino", "sam"]  # the default families for every other backend


@pytest.mark.parametrize("entry", ["sam2-demo", "edgetam-demo"])
def test_sam2_family_region_masks_equal_the_processors_and_batching_keeps_them(weights_dir, entry):
    segmenter = load_segmenter("auto", weights_dir / "demo" / entry, CPU)
    boxes = np.array([[10, 10, 50, 60], [30, 20, 120, 90], [0, 0, 6, 6], [60, 5, 127, 95]], np.float32)
    logits, original = segmenter._logits(IMAGE, boxes)
    full = segmenter.segment_boxes_full_resolution(IMAGE, boxes)  # transformers' post_process_masks over the whole image
    region = segmenter.segment_masks(IMAGE, boxes)
    assert original == (96, 128) and full.shape == region.data.shape == (4, 96, 128) and full.any()
    # a pixel may differ only where the whole-image logit is within float rounding of 0 (iapas/acceleration/mask_upsampling.py)
    upsampled = torch.nn.functional.interpolate(logits[:, None], original, mode="bilinear", align_corners=False)[:, 0]
    differs = full != region.data
    assert not differs.any() or bool((upsampled.abs()[torch.from_numpy(differs)] < 1e-5).all())
    for mask, (x0, y0, x1, y1) in zip(region.data, region.regions):  # each region holds its mask's every True pixel
        assert mask.sum() == mask[y0:y1, x0:x1].sum()
    other = np.ascontiguousarray(IMAGE[::-1])
    encodings = segmenter.encode_batch([other, IMAGE])  # one encoder forward for both images
    np.testing.assert_allclose(segmenter._logits(IMAGE, boxes, encodings[1])[0], logits, atol=1e-4)
    np.testing.assert_array_equal(segmenter.segment_masks_encoded(other, encodings[0], boxes).data,
                                  segmenter.segment_masks(other, boxes).data)
