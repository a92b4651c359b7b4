"""SAM 3 in the IAP-AS stage graph, on a tiny random Sam3Model loaded through the real loader (--profile sam3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iapas.config import Config, build_config
from iapas.errors import IapasError


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    from iapas.weights.demo import build_demo_sam3

    return build_demo_sam3(tmp_path_factory.mktemp("sam3") / "sam3-demo")


def sam3_config(directory, **settings) -> Config:
    config = build_config(None, {}, "sam3")
    return config.updated({"detection.weights": str(directory), **settings})


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def direct(directory, picture, concepts, threshold):
    """SAM 3 run by hand with transformers: per concept, every instance at or above the threshold."""
    from transformers import Sam3Model, Sam3Processor

    model, processor = Sam3Model.from_pretrained(directory).eval(), Sam3Processor.from_pretrained(directory)
    found = []
    with torch.no_grad():
        for concept in concepts:
            inputs = processor(images=picture, text=concept, return_tensors="pt")
            out = processor.post_process_instance_segmentation(model(**inputs), threshold=threshold, mask_threshold=0.5,
                                                               target_sizes=[picture.shape[:2]])[0]
            found += [(box, float(score), mask, concept) for box, score, mask in
                      zip(out["boxes"].numpy(), out["scores"].numpy(), out["masks"].bool().numpy())]
    return found


def test_masks_and_scores_reach_the_result_unchanged_and_the_size_filter_applies(sam3_dir):
    from iapas.methods.iapas.pipeline import Pipeline

    # fp32 as the hand-run model below (the recipe's precision auto is bf16 on a CPU with AMX)
    pipeline = Pipeline.from_config(sam3_config(sam3_dir, **{"detection.box_threshold": 0.2, "filtering.nms_iou": 1.0,
                                                               "precision": "fp32"}))
    assert pipeline.segmenter is pipeline.detector  # one model: detection and masks from one image encoding
    encodings, texts = [], []
    model = pipeline.detector.model
    model.vision_encoder.register_forward_hook(lambda *_: encodings.append(1))
    model.text_encoder.register_forward_pre_hook(lambda module, args, kwargs: texts.append(kwargs["input_ids"]), with_kwargs=True)
    picture = image()
    expected = direct(sam3_dir, picture, ["scratch", "dent"], 0.2)
    ratios = [(b[2] - b[0]) * (b[3] - b[1]) / (60 * 80) for b, *_ in expected]
    limit = float(np.median(ratios))  # the size filter must remove about half of them
    result = pipeline.segment(picture, prompts=["scratch", "dent"], size_threshold=limit)
    assert len(encodings) == 1  # the image encoded once for both prompts
    tokenizer = pipeline.detector.processor.tokenizer
    assert [tokenizer.decode(ids[0], skip_special_tokens=True).replace(" ", "") for ids in texts] == ["scratch", "dent"]
    kept = [item for item, ratio in zip(expected, ratios) if ratio < limit]
    assert 0 < len(result.boxes) == len(kept) < len(expected)
    for xyxy, found_score, phrase, found_mask in zip(result.boxes.xyxy, result.boxes.scores, result.boxes.phrases, result.masks.data):
        box, score, mask, concept = min(kept, key=lambda item: np.abs(item[0] - xyxy).max())  # NMS orders by score
        np.testing.assert_allclose(xyxy, box, rtol=1e-5, atol=1e-4)
        assert found_score == pytest.approx(score, rel=1e-6) and phrase == concept
        assert np.array_equal(found_mask, mask)


def test_segmenting_boxes_it_did_not_detect_is_refused(sam3_dir):
    from iapas.backends.sam3 import Sam3Backend

    backend = Sam3Backend(sam3_dir)
    with pytest.raises(IapasError, match="only the instances it detected"):
        backend.segment_boxes(image(), np.array([[0, 0, 10, 10]], np.float32))


def test_text_threshold_is_refused_under_the_sam3_profile(sam3_dir, tmp_path, capsys):
    from PIL import Image

    from cli_runner import error_lines, run

    Image.fromarray(image()).save(tmp_path / "part.png")
    code, _, err = run(capsys, "segment", tmp_path / "part.png", "--profile", "sam3", "--text-threshold", "0.3", "--prompt", "scratch",
                       "-o", tmp_path / "out")
    assert code == 2 and error_lines(err) == [
        "iapas: error: --text-threshold does not apply to SAM 3 (it has no per-token text scores); "
        "--box-threshold is its instance score threshold"]
