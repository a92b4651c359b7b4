"""CLIPSeg: a tiny random CLIPSegForImageSegmentation saved with save_pretrained, loaded through the method's loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iapas.config import Config
from iapas.errors import WeightsError
from iapas.methods import METHODS
from iapas.methods.clipseg import DEFAULT_PROMPTS, merge_maps, prompts_for
from iapas.weights.demo import build_demo_clipseg


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipseg-weights")
    build_demo_clipseg(root / "demo" / "clipseg-demo")
    return root


def test_prompts_fill_the_object_name():
    assert prompts_for(DEFAULT_PROMPTS, "metal_nut") == ("abnormal", "defect", "abnormal metal nut", "metal nut defect")


def test_merge_is_the_mean_of_the_prompt_maps():
    maps = torch.tensor([[[0.0, 1.0]], [[0.5, 0.0]]])
    assert merge_maps(maps).tolist() == [[0.25, 0.5]]


def test_map_is_the_mean_of_each_prompt_alone_upsampled(weights_dir):
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    method = METHODS.get("clipseg")(Config(weights_dir=str(weights_dir), device="cpu"), ())
    method.prepare("metal_nut", [], "object", weights_dir)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    result = method.segment(image)
    assert result.anomaly_map.shape == (40, 56) and result.anomaly_map.dtype == np.float32
    assert result.prompts == prompts_for(DEFAULT_PROMPTS, "metal_nut")

    # independently: each prompt in its own forward (no padding), sigmoid, mean, bilinear to the image
    path = weights_dir / "demo" / "clipseg-demo"
    processor, model = CLIPSegProcessor.from_pretrained(path), CLIPSegForImageSegmentation.from_pretrained(path).eval()
    alone = []
    with torch.no_grad():
        for prompt in result.prompts:
            inputs = processor(text=[prompt], images=[image], return_tensors="pt")
            alone.append(torch.sigmoid(model(**inputs).logits.reshape(1, 1, *model(**inputs).logits.shape[-2:])))
    expected = torch.nn.functional.interpolate(torch.cat(alone).mean(0, keepdim=True), size=(40, 56), mode="bilinear")
    np.testing.assert_allclose(result.anomaly_map, expected[0, 0].numpy(), atol=1e-5)
    assert np.ptp(result.anomaly_map) > 0  # random weights still give a non-constant map

    method.prepare("screw", [], "object", weights_dir)
    assert not np.allclose(method.segment(image).anomaly_map, result.anomaly_map)  # the object name reaches the model


def test_missing_weights_name_the_manifest_entry(tmp_path):
    with pytest.raises(WeightsError, match="clipseg-rd64-refined"):
        METHODS.get("clipseg")(Config(weights_dir=str(tmp_path), device="cpu"), ())
