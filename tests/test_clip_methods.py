"""The shared CLIP backbone on a tiny random CLIP loaded through the real loader (methods: test_winclip.py, test_adaclip.py, ...)."""
import numpy as np
import pytest
import torch

from iapas.backends.clip import ClipBackbone
from iapas.weights.manifest import find_weights


@pytest.fixture(scope="module")
def backbone(weights_dir):
    return ClipBackbone(find_weights("clip", weights_dir)[1])


def image(seed=0, shape=(70, 90, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_backbone_token_paths_match_clip(backbone):
    pixels = backbone.preprocess([image()])
    tokens = backbone.tokens(pixels)
    full, _ = backbone.encode_tokens(tokens)
    expected = backbone.clip.get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)  # our token path is CLIP's own forward
    sentence = ["a photo of a washer."]
    ids = backbone.tokenizer(sentence, return_tensors="pt")["input_ids"]
    eos = (ids == backbone.clip.text_model.eos_token_id).int().argmax(-1)
    learned_path = backbone.encode_text_embeddings(backbone.clip.text_model.embeddings.token_embedding(ids), eos)
    torch.testing.assert_close(learned_path, backbone.encode_text(sentence), atol=1e-5, rtol=1e-5)
