"""Region-only SAM mask post-processing equals SAM's whole-image one; region-only scoring equals the whole-image sum."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iapas.acceleration import mask_upsampling
from iapas.backends import load_segmenter
from iapas.acceleration.mask_upsampling import ResizeStep, sam_steps, upsample_positive
from iapas.stages import MaskStage
from iapas.stages.scoring import summed_map
from iapas.types import Boxes, Masks
from iapas.weights.manifest import find_weights

CPU = torch.device("cpu")
ROUNDING = 1e-5  # a pixel may differ only where the full-resolution logit is this close to 0


def reference_logits(logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """segment_anything Sam.postprocess_masks: to 1024x1024, crop, to the original size."""
    values = F.interpolate(logits[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    values = values[..., : input_size[0], : input_size[1]]
    return F.interpolate(values, original_size, mode="bilinear", align_corners=False)[:, 0].numpy()


def assert_same_masks(masks: np.ndarray, logits: np.ndarray) -> None:
    """Masks equal logits > 0, except pixels whose logit is within float rounding of 0."""
    differ = masks != (logits > 0)
    assert np.abs(logits[differ]).max(initial=0.0) < ROUNDING, f"{differ.sum()} pixels differ"


def assert_regions_hold_masks(masks: Masks) -> None:
    for mask, (left, top, right, bottom) in zip(masks.data, masks.regions):
        assert mask[top:bottom, left:right].sum() == mask.sum()


def sam_like_logits(count: int, seed: int) -> torch.Tensor:
    """Smooth blobs (as SAM's box masks are), a single spike, an all-negative and an all-positive mask."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 1, 8, 8, generator=generator) * 6 - 7
    logits = F.interpolate(coarse, (256, 256), mode="bicubic", align_corners=False)[:, 0]
    logits += 0.3 * torch.randn(count, 256, 256, generator=generator)
    logits[0] = -3.0
    logits[0, 0, 37] = 0.5  # one positive logit, in the top row that every crop keeps
    logits[1] = -1.0
    logits[2] = torch.randn(256, 256, generator=generator) + 0.5  # positives everywhere
    return logits


def preprocess_shape(height: int, width: int) -> tuple[int, int]:
    """segment_anything ResizeLongestSide.get_preprocess_shape (at least one pixel for very thin images)."""
    scale = 1024 / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


DEFAULT_SHARE = mask_upsampling.WHOLE_IMAGE_SHARE


@pytest.mark.parametrize("seed, size, whole_share", [
    (0, (1024, 1024), DEFAULT_SHARE), (1, (333, 517), DEFAULT_SHARE), (2, (2, 5000), DEFAULT_SHARE),
    (3, (517, 333), DEFAULT_SHARE), (4, (4000, 3000), DEFAULT_SHARE),
    (5, (1024, 1024), 2.0), (6, (333, 517), 2.0), (7, (2, 5000), 2.0), (8, (1500, 1100), 2.0)])
def test_region_upsampling_equals_sams_postprocessing(seed, size, whole_share, monkeypatch):
    # whole_share 2.0: never the whole-image fallback, so the region code alone is checked on dense masks too
    monkeypatch.setattr(mask_upsampling, "WHOLE_IMAGE_SHARE", whole_share)
    logits = sam_like_logits(4 if size == (4000, 3000) else 7, seed)
    input_size = preprocess_shape(*size)
    masks = upsample_positive(logits, sam_steps(input_size, size))
    assert masks.data.shape == (len(logits), *size) and masks.data.dtype == bool
    assert_same_masks(masks.data, reference_logits(logits, input_size, size))
    assert_regions_hold_masks(masks)
    assert not masks.data[1].any() and tuple(masks.regions[1]) == (0, 0, 0, 0)
    # the one positive low-res logit reaches only the pixels it is interpolated into: a few low-res pixels' span
    left, top, right, bottom = masks.regions[0]
    longest = max(size)
    assert 0 < right - left <= 3 * longest / 256 + 4 and 0 < bottom - top <= 3 * longest / 256 + 4


def test_region_of_a_hand_computed_case():
    # 4 -> 8 -> crop 6 -> 3: only low-res pixel (1, 2) is positive
    logits = torch.full((1, 4, 4), -1.0)
    logits[0, 1, 2] = 3.0
    steps = [ResizeStep((8, 8), (6, 6)), ResizeStep((3, 3))]
    masks = upsample_positive(logits, steps)
    values = F.interpolate(logits[:, None], (8, 8), mode="bilinear", align_corners=False)[..., :6, :6]
    expected = F.interpolate(values, (3, 3), mode="bilinear", align_corners=False)[:, 0] > 0
    np.testing.assert_array_equal(masks.data, expected.numpy())
    # 8x8 stage (src = 0.5 d - 0.25): rows 0-4 read row 1 (row 0 with weight 0), columns 3-6 read column 2,
    # cropped to 3-5; 3x3 stage (src = 2 d + 0.5) reads rows/columns (0, 1), (2, 3), (4, 5): rows 0-2, columns 1-2
    assert tuple(masks.regions[0]) == (1, 0, 3, 3)


def test_no_masks_and_no_steps():
    assert upsample_positive(torch.zeros(0, 16, 16), sam_steps((8, 8), (8, 8))).data.shape == (0, 8, 8)
    logits = torch.full((1, 5, 6), -1.0)
    logits[0, 2:4, 1] = 1.0
    masks = upsample_positive(logits, [])
    np.testing.assert_array_equal(masks.data[0], logits[0].numpy() > 0)
    assert tuple(masks.regions[0]) == (1, 2, 2, 4)


def count_calls(monkeypatch) -> list[int]:
    from iapas.backends import sam

    calls = []

    def counted(logits, steps):
        calls.append(len(logits))
        return upsample_positive(logits, steps)

    monkeypatch.setattr(sam, "upsample_positive", counted)
    return calls


def test_original_sam_uses_region_upsampling(weights_dir, monkeypatch):
    segmenter = load_segmenter("sam", find_weights("segmenter", weights_dir)[1], CPU)
    calls = count_calls(monkeypatch)
    image = np.random.default_rng(0).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    xyxy = np.array([[10, 10, 50, 60], [30, 20, 130, 80], [0, 0, 5, 5]], np.float32)
    result = MaskStage(segmenter).run(image, Boxes(xyxy, np.ones(3, np.float32)))["masks"]
    assert calls == [3] and result.regions is not None
    # SAM's own predict_torch with logits returned: its whole-image postprocess_masks
    predictor = segmenter.predictor
    predictor.set_image(image)
    with torch.inference_mode():
        boxes = predictor.transform.apply_boxes_torch(torch.tensor(xyxy), image.shape[:2])
        logits, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False, return_logits=True)
    predictor.reset_image()
    assert_same_masks(result.data, logits[:, 0].numpy())
    assert_regions_hold_masks(result)
    np.testing.assert_array_equal(result.data, segmenter.segment_boxes_full_resolution(image, xyxy))
    np.testing.assert_array_equal(segmenter.segment_boxes(image, xyxy), result.data)


def test_hf_sam_uses_region_upsampling(hf_sam_dir, monkeypatch):
    segmenter = load_segmenter("hf-sam", hf_sam_dir, CPU)
    calls = count_calls(monkeypatch)
    image = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    xyxy = np.array([[5, 5, 40, 40], [20, 10, 90, 60]], np.float32)
    result = MaskStage(segmenter).run(image, Boxes(xyxy, np.ones(2, np.float32)))["masks"]
    assert calls == [2] and result.regions is not None
    low_res, inputs = segmenter._decode(image, xyxy)
    logits = segmenter.processor.image_processor.post_process_masks(
        low_res[None, :, None], inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False)[0]
    assert_same_masks(result.data, logits[:, 0].numpy())
    assert_regions_hold_masks(result)
    np.testing.assert_array_equal(result.data, segmenter.segment_boxes_full_resolution(image, xyxy))


def whole_image_sum(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The map as it was computed before regions: every mask over the whole image, in order."""
    total = np.zeros(masks.shape[1:], np.float32)
    for score, mask in zip(scores.astype(np.float32), masks):
        total += score * mask
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_scoring_equals_whole_image_sum(seed):
    rng = np.random.default_rng(seed)
    height, width = 61, 83
    data = np.zeros((6, height, width), bool)
    for mask in data[:-1]:  # the last mask stays empty
        top, left = rng.integers(0, height - 1), rng.integers(0, width - 1)
        patch = rng.random((rng.integers(1, height - top), rng.integers(1, width - left))) < 0.6
        mask[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    scores = rng.random(6).astype(np.float32)
    expected = whole_image_sum(data, scores)
    measured = Masks(data)  # regions measured from the data
    np.testing.assert_array_equal(summed_map(measured, scores, height, width), expected)
    assert_regions_hold_masks(Masks(data, measured.bounding_regions()))
    assert tuple(measured.bounding_regions()[-1]) == (0, 0, 0, 0)
    # regions from the up-sampling: masks of real SAM-like logits
    logits = sam_like_logits(5, seed)
    upsampled = upsample_positive(logits, sam_steps((512, 1024), (300, 600)))
    scores = rng.random(5).astype(np.float32)
    np.testing.assert_array_equal(summed_map(upsampled, scores, 300, 600), whole_image_sum(upsampled.data, scores))


def test_bounding_regions_hand_computed():
    data = np.zeros((2, 4, 5), bool)
    data[0, 1, 2] = data[0, 2, 4] = True
    assert Masks(data).bounding_regions().tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="1 regions for 2 masks"):
        Masks(data, np.zeros((1, 4), np.int64))
