"""SAM's encoder attention on torch's fused kernel equals segment_anything's own (iapas/backends/sam_attention.py).

Stated bound: image embeddings within 1e-5 absolute (about 1e-6 of their scale; only the order of the
arithmetic differs), on the demo SAM, whose relative-position tables are filled (released SAMs learn them;
a fresh model starts them at zero, which would hide the bias path).
"""
import numpy as np
import pytest
import torch

from iapas.backends import load_segmenter
from iapas.backends.sam_attention import attention_blocks, fused_attention, reference_attention
from iapas.bench.naive import full_resolution_masks
from iapas.types import Boxes

IMAGE = np.random.default_rng(11).integers(0, 256, (120, 200, 3), dtype=np.uint8)


@pytest.fixture()
def segmenter(weights_dir):
    sam = load_segmenter("sam", weights_dir / "demo" / "sam_demo.pth", torch.device("cpu"))
    for block in attention_blocks(sam.predictor.model.image_encoder):
        assert block.use_rel_pos and block.rel_pos_h.abs().min() > 0 and block.rel_pos_w.abs().min() > 0
    return sam


def test_fused_attention_gives_the_reference_embeddings(segmenter):
    encoder = segmenter.predictor.model.image_encoder
    blocks = attention_blocks(encoder)
    assert len(blocks) == 2 and all(block.forward.__func__ is fused_attention for block in blocks)
    pixels = segmenter.encoder_inputs(IMAGE)
    with torch.inference_mode():
        fused = encoder(pixels)
        with reference_attention(encoder):
            assert all("forward" not in vars(block) for block in blocks)  # segment_anything's own forward runs
            reference = encoder(pixels)
    assert all(block.forward.__func__ is fused_attention for block in blocks)  # and the fused one is back
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)
    # the relative-position bias matters here: dropping it moves the embeddings far beyond the bound
    with torch.inference_mode():
        for block in blocks:
            block.use_rel_pos = False
        try:
            assert (encoder(pixels) - reference).abs().max() > 1e-3
        finally:
            for block in blocks:
                block.use_rel_pos = True


def test_naive_masks_run_the_reference_kernels_and_agree(segmenter):
    boxes = Boxes(np.array([[10, 10, 90, 70], [100, 20, 190, 110]], np.float32), np.array([0.9, 0.8], np.float32))
    calls = []
    real = segmenter.reference_kernels

    def counted():
        calls.append(1)
        return real()

    segmenter.reference_kernels = counted
    naive = full_resolution_masks(segmenter, IMAGE, boxes)
    assert calls == [1]
    ours = segmenter.segment_masks(IMAGE, boxes.xyxy).data
    assert naive.shape == ours.shape == (2, 120, 200) and naive.any()
    assert (naive != ours).mean() < 1e-3  # borderline pixels only (embeddings within 1e-5)


def test_fused_attention_in_a_batch_and_under_bf16(segmenter):
    encoder = segmenter.predictor.model.image_encoder
    other = np.ascontiguousarray(IMAGE[:, ::-1])
    pixels = torch.cat([segmenter.encoder_inputs(IMAGE), segmenter.encoder_inputs(other)])
    with torch.inference_mode():
        batched = encoder(pixels)
        with reference_attention(encoder):
            reference = torch.cat([encoder(pixels[:1]), encoder(pixels[1:])])
        torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)  # each row its own image's embedding
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder(pixels).float()
            with reference_attention(encoder):
                low_reference = encoder(pixels).float()
    scale = reference.abs().mean()
    # bf16 rounds both paths; they stay as close to each other as each is to fp32 (stated: 5% of the mean magnitude)
    assert (low - low_reference).abs().mean() < 0.05 * scale and (low - reference).abs().mean() < 0.05 * scale
