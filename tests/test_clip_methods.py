"""WinCLIP and the shared CLIP backbone on a tiny random CLIP loaded through the real loader (AdaCLIP: test_adaclip.py)."""
import json

import numpy as np
import pytest
import torch

from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.weights import find_weights


@pytest.fixture(scope="module")
def backbone(weights_dir):
    return ClipBackbone(find_weights("clip", weights_dir)[1])


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    spec = SynthSpec(categories=("washer", "tile"), defects=("hole", "stain"), train_good=1, test_good=2, per_defect=3, size=64)
    return write_synth_dataset(tmp_path_factory.mktemp("aux"), spec)


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


def test_winclip_result(backbone):
    method = WinClip(backbone, "washer")
    patch_map, class_score = method.score(image())
    assert patch_map.shape == (backbone.grid, backbone.grid) and 0 < class_score < 1
    result = method.segment(image())
    assert result.anomaly_map.shape == (70, 90) and result.anomaly_map.dtype == np.float32
    assert result.image_score == pytest.approx(0.5 * (class_score + result.anomaly_map.max()), abs=1e-6)
    assert len(result.boxes) == 0 and result.method == "winclip"


def test_cli_segment_and_eval_with_winclip(capsys, weights_dir, train_root, tmp_path):
    picture = next((train_root / "washer" / "test" / "hole").glob("*.png"))
    out = tmp_path / "winclip"
    code = main(["segment", str(picture), "--method", "winclip", "--category", "washer", "-o", str(out),
                 "--weights", str(weights_dir), "--no-progress"])
    capsys.readouterr()
    record = json.loads((out / f"{picture.stem}.json").read_text())
    assert code == 0 and record["method"] == "winclip" and np.load(out / f"{picture.stem}.npy").shape == (64, 64)
    code = main(["eval", "--dataset", "mvtec", "--root", str(train_root), "--method", "winclip", "-o", str(tmp_path / "res"),
                 "--weights", str(weights_dir), "--no-progress"])
    assert code == 0 and "| **mean** |" in capsys.readouterr().out
    assert json.loads((tmp_path / "res" / "winclip" / "run.json").read_text())["image_score"] == "max"
    assert main(["segment", str(picture), "--method", "nope", "-o", str(tmp_path / "x"), "--weights", str(weights_dir)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    code = main(["segment", str(picture), "--method", "winclip", "--prompt", "crack", "-o", str(tmp_path / "y"),
                 "--weights", str(weights_dir)])
    assert code == 2 and "--prompt only apply to --method iapas, not winclip" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
