"""WinCLIP's caoyunkang variant against caoyunkang/WinClip itself (../shared/reference/WinClip), on one tiny random CLIP.

The reference's own `CLIPAD.CLIP` (its windowed open_clip fork) is built with random weights at windows 2 and
3, saved as an open_clip state dict and loaded by iapas through the converter users run. The reference's
`WinClipAD` is built as eval_WinCLIP.py builds it, with two changes where it cannot run here: its model
factory (which downloads ViT-B-16-plus-240) returns the tiny model, and its precision, hard-coded to fp16
for a GPU, is fp32 on this CPU (iapas runs WinCLIP in float32 unless --precision says otherwise).
Both see the same images: the reference through eval_WinCLIP.py's path (cv2's BGR image resized to 1024, its
PIL transform; few-shot references converted to RGB first), iapas from the RGB image.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_source import reference_copy

SIZE = 40  # tiny CLIP: 40 px, 8 px patches, a 5 x 5 grid
SCALES = (2, 3)  # eval_WinCLIP.py --scales default
# both sides are float32 with the same window masks; they differ only in summation order (open_clip-style versus
# transformers attention) and in 1 / normality being computed on a CPU tensor there: the maps agree to ~1e-7
MAP_TOLERANCE = 1e-5
CLASS_NAME = "candle"


def rgb(seed: int, shape=(60, 70, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def winclip_reference(tmp_path_factory):
    """The reference's WinCLIP module (imported from a copy) and a tiny random CLIPAD model with its open_clip file."""
    folder = reference_copy("WinClip", tmp_path_factory.mktemp("reference"))
    sys.path.insert(0, str(folder))
    try:
        import WinCLIP
        from WinCLIP import CLIPAD
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == "WinCLIP" or m.startswith("WinCLIP.")]:
            del sys.modules[name]  # nothing named WinCLIP stays importable for other tests
    torch.manual_seed(0)
    model = CLIPAD.CLIP(embed_dim=16, vision_cfg=dict(layers=2, width=64, head_width=64, patch_size=8, image_size=SIZE),
                        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2), scales=SCALES).eval()
    with torch.no_grad():  # away from the initial norms and biases, so that every weight matters
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("openclip") / "ViT-tiny.pt"
    torch.save(model.state_dict(), path)
    return WinCLIP, CLIPAD, model, path


@pytest.fixture
def reference_model(winclip_reference, monkeypatch):
    """WinClipAD as eval_WinCLIP.py builds it (img_resize = cropsize = the CLIP's size), on the tiny model, in fp32."""
    module, clipad, model, _ = winclip_reference

    def create(model_name, pretrained, scales, precision):
        assert (model_name, pretrained, tuple(scales)) == ("ViT-B-16-plus-240", "laion400m_e32", SCALES)
        return model, None, None

    monkeypatch.setattr(clipad, "create_model_and_transforms", create)

    def build(out_size: tuple[int, int]):
        reference = module.WinClipAD(out_size_h=out_size[0], out_size_w=out_size[1], device="cpu", backbone="ViT-B-16-plus-240",
                                     pretrained_dataset="laion400m_e32", scales=SCALES, img_resize=SIZE, img_cropsize=SIZE)
        reference.precision = "fp32"  # WinCLIP/model.py hard-codes fp16 (a GPU); this CPU runs float32
        return reference

    return build


@pytest.fixture(scope="module")
def backbone(winclip_reference):
    from iapas.backends.clip import ClipBackbone

    return ClipBackbone(winclip_reference[3])


def reference_input(picture: np.ndarray, transform, reference_image: bool) -> torch.Tensor:
    """eval_WinCLIP.py test(): cv2 reads BGR and resizes to 1024 (datasets/dataset.py); references become RGB, queries not."""
    import cv2
    from PIL import Image

    bgr = cv2.resize(np.ascontiguousarray(picture[..., ::-1]), (1024, 1024))
    return transform(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if reference_image else bgr))


@pytest.mark.parametrize("shots", [0, 1])
def test_caoyunkang_variant_equals_caoyunkangs_winclip(reference_model, backbone, shots):
    from iapas.methods.winclip import WinClip

    picture, normal = rgb(1), rgb(2)
    ours = WinClip(backbone, CLASS_NAME, variant="caoyunkang")
    grid = backbone.grid
    patch_reference = reference_model((grid, grid))
    patch_reference.build_text_feature_gallery(CLASS_NAME)
    if shots:
        ours.set_references([normal])
        patch_reference.build_image_feature_gallery(reference_input(normal, patch_reference.transform, True)[None])
    expected_patches = patch_reference(reference_input(picture, patch_reference.transform, False)[None])[0]
    patch_map, _ = ours.score(picture)
    np.testing.assert_allclose(patch_map, expected_patches, atol=MAP_TOLERANCE, rtol=0)  # the (grid, grid) map itself

    height, width = picture.shape[:2]
    full_reference = reference_model((height, width))  # eval_WinCLIP.py: bilinear to the evaluation size
    full_reference.build_text_feature_gallery(CLASS_NAME)
    if shots:
        full_reference.build_image_feature_gallery(reference_input(normal, full_reference.transform, True)[None])
    expected = full_reference(reference_input(picture, full_reference.transform, False)[None])[0]
    ours.class_name = CLASS_NAME
    result = ours.segment(picture)
    assert result.anomaly_map.shape == expected.shape == (height, width)
    np.testing.assert_allclose(result.anomaly_map, expected, atol=MAP_TOLERANCE, rtol=0)
    # utils/metrics.py metric_cal: the image score is the map's maximum
    assert result.image_score == pytest.approx(float(expected.max()), abs=MAP_TOLERANCE)
    assert float(np.abs(expected).max()) > 100 * MAP_TOLERANCE  # a map with values to compare, not zeros
