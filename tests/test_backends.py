"""Real architectures, tiny sizes, real file formats, loaded through the loaders users run."""
import numpy as np
import pytest
import torch

from iapas.backends import load_detector, load_segmenter
from iapas.stages.detection import captions_for
from iapas.backends.sam import OriginalSam, infer_sam_geometry
from iapas.weights.demo import DEMO_SAM_GEOMETRY
from iapas.errors import WeightsError
from iapas.weights.manifest import find_weights

CPU = torch.device("cpu")


def test_caption_formats_and_splitting():
    prompts = ["Abnormal", "metal scratch", "defect"]
    assert captions_for(prompts, "dots", lambda c: True) == ["abnormal . metal scratch . defect ."]
    # the official caption: ' . ' + nouns joined by '. ' + ', ' + object tag + '.', lower-cased and stripped
    assert captions_for(["scratch", "dent", "washer"], "official", lambda c: True) == [". scratch. dent, washer."]
    assert captions_for(["washer"], "official", lambda c: True) == ["washer."]
    short = lambda caption: len(caption) <= 20  # noqa: E731
    short = lambda caption: len(caption) <= 24  # noqa: E731
    assert captions_for(["scratch", "dent", "crack", "washer"], "official", short) == [". scratch. dent, washer.", ". crack, washer."]
    assert captions_for(["a", "bb", "ccc"], "dots", lambda c: len(c) <= 8) == ["a . bb .", "ccc ."]


@pytest.mark.parametrize("variant, embed_dim, depth, heads, globals_", [
    ("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    ("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    ("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
])
def test_sam_geometry_of_released_variants(variant, embed_dim, depth, heads, globals_):
    from segment_anything.build_sam import sam_model_registry

    with torch.device("meta"):  # shapes only: no memory, no download
        model = sam_model_registry[variant]()
    geometry = infer_sam_geometry(model.state_dict())
    assert geometry.variant == variant
    assert (geometry.embed_dim, geometry.depth, geometry.num_heads) == (embed_dim, depth, heads)
    assert geometry.global_attn_indexes == globals_
    assert (geometry.image_size, geometry.window_size, geometry.prompt_dim) == (1024, 14, 256)


def test_sam_geometry_round_trip_of_tiny_model(weights_dir):
    entry, path = find_weights("segmenter", weights_dir)
    assert entry.name == "sam-demo" and entry.demo
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert infer_sam_geometry(state) == DEMO_SAM_GEOMETRY
    assert infer_sam_geometry(state).variant == "custom"


def test_original_sam_masks_every_box_at_input_resolution(weights_dir):
    segmenter = load_segmenter("auto", find_weights("segmenter", weights_dir)[1], CPU)
    assert isinstance(segmenter, OriginalSam)
    image = np.random.default_rng(0).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    masks = segmenter.segment_boxes(image, np.array([[10, 10, 50, 60], [30, 20, 130, 80], [0, 0, 5, 5]], np.float32))
    assert masks.shape == (3, 90, 140) and masks.dtype == bool
    again = segmenter.segment_boxes(image, np.array([[10, 10, 50, 60]], np.float32))
    np.testing.assert_array_equal(again[0], masks[0])  # batching does not change a box's mask


def test_hf_sam_directory_backend(hf_sam_dir):
    segmenter = load_segmenter("auto", hf_sam_dir, CPU)
    image = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    masks = segmenter.segment_boxes(image, np.array([[5, 5, 40, 40], [20, 10, 90, 60]], np.float32))
    assert masks.shape == (2, 70, 100) and masks.dtype == bool


def test_grounding_dino_detects_within_image(weights_dir):
    detector = load_detector("hf-grounding-dino", find_weights("detector", weights_dir)[1], CPU)
    image = np.random.default_rng(2).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    boxes = detector.detect(image, ["abnormal", "defect", "metal scratch"], 0.0, 0.0)
    assert len(boxes) == detector.model.config.num_queries
    assert boxes.xyxy.min() >= 0 and boxes.xyxy[:, 2].max() <= 120 and boxes.xyxy[:, 3].max() <= 80
    # every caption token is above a text threshold of 0: each box is named by all the caption's words
    assert set(boxes.phrases) == {"abnormal defect metal scratch"}
    assert np.all((boxes.scores >= 0) & (boxes.scores <= 1))
    # Raising the box threshold keeps exactly the boxes scoring above it.
    cut = float(np.median(boxes.scores))
    strict = detector.detect(image, ["abnormal", "defect", "metal scratch"], cut, 0.0)
    assert len(strict) == int((boxes.scores > cut).sum())
    # A text threshold above every score leaves the boxes but without phrases.
    unnamed = detector.detect(image, ["abnormal", "defect", "metal scratch"], 0.0, 1.0)
    assert len(unnamed) == len(boxes) and set(unnamed.phrases) == {""}


def test_grounding_dino_splits_long_prompt_lists(weights_dir):
    detector = load_detector("hf-grounding-dino", find_weights("detector", weights_dir)[1], CPU)
    prompts = [f"defect{i}" for i in range(6)]
    fits = lambda caption: detector.count_tokens(caption) <= 12  # noqa: E731  (force several captions on the tiny model)
    captions = captions_for(prompts, "dots", fits)
    assert len(captions) > 1 and " ".join(captions).replace(" .", "").split() == prompts
    image = np.zeros((64, 64, 3), np.uint8)
    before = detector.backbone_runs
    boxes = detector.detect_captions(image, captions, 0.0, 0.0)
    assert len(boxes) == len(captions) * detector.model.config.num_queries
    assert detector.backbone_runs - before == 1  # the image is encoded once for all captions
    # and reusing the features changes nothing: each caption alone gives the same boxes
    detector.forget_features()  # each caption below is encoded afresh
    alone = []
    for caption in captions:
        alone.append(detector.detect_captions(image, [caption], 0.0, 0.0))
        detector.forget_features()
    assert detector.backbone_runs - before == 1 + len(captions)
    np.testing.assert_allclose(boxes.xyxy, np.concatenate([b.xyxy for b in alone]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(boxes.scores, np.concatenate([b.scores for b in alone]), rtol=1e-5, atol=1e-6)


def test_missing_and_wrong_weights_are_one_line_errors(tmp_path, weights_dir):
    with pytest.raises(WeightsError, match="no detector weights in .*grounding-dino-tiny.*huggingface.co/IDEA-Research"):
        find_weights("detector", tmp_path)
    with pytest.raises(WeightsError, match="SAM weights not found: .*sam_vit_h_4b8939.pth.*dl.fbaipublicfiles.com"):
        load_segmenter("sam", tmp_path / "sam_vit_h_4b8939.pth", CPU)
    garbage = tmp_path / "sam_vit_b_01ec64.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint") as error:
        load_segmenter("auto", garbage, CPU)
    assert "\n" not in str(error.value)
    foreign = tmp_path / "foreign.pth"
    torch.save({"layer.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(WeightsError, match="not a SAM checkpoint"):
        load_segmenter("sam", foreign, CPU)
    with pytest.raises(WeightsError, match="cannot read Grounding DINO checkpoint"):  # a file is taken as an original .pth
        load_detector("hf-grounding-dino", garbage, CPU)
    empty = tmp_path / "grounding-dino-tiny"
    empty.mkdir()
    with pytest.raises(WeightsError, match="cannot load Grounding DINO"):
        load_detector("hf-grounding-dino", empty, CPU)
