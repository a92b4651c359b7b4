"""WinCLIP and AdaCLIP-style on a tiny random CLIP loaded through the real loader."""
import json

import numpy as np
import pytest
import torch

from iapas.methods.adaclip.model import AdaClip, AdaClipSettings, default_layers, most_anomalous_centroid
from iapas.methods.adaclip.train import train_adaclip
from iapas.prompt_learning import TrainOptions, dice_loss, focal_loss
from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.errors import WeightsError
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


def test_losses_on_hand_cases():
    target = torch.tensor([[1.0, 0.0]])
    assert float(dice_loss(target, target)) == pytest.approx(0.0)
    assert float(dice_loss(torch.tensor([[0.0, 1.0]]), target)) == pytest.approx(1 - 1 / 3)
    confident = focal_loss(torch.tensor([[0.9, 0.1]]), target)
    assert float(confident) == pytest.approx(-(0.1 ** 2) * np.log(0.9))


def test_hsf_centroid_of_the_most_anomalous_cluster_on_a_hand_case():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1],  # a normal group
                           [5.0, 5.0], [5.2, 5.0], [5.0, 5.3],  # an anomalous group
                           [0.0, 9.0], [0.2, 9.0]])  # a second normal group
    scores = torch.tensor([0.1, 0.2, 0.1, 0.9, 0.7, 0.8, 0.3, 0.2])
    torch.testing.assert_close(most_anomalous_centroid(points, scores, 3), torch.tensor([15.2 / 3, 15.3 / 3]))  # by hand
    torch.testing.assert_close(most_anomalous_centroid(points, scores, 1), points.mean(0))  # one cluster: all patches
    assert most_anomalous_centroid(points, scores, 20).shape == (2,)  # k above N: every point its own cluster
    torch.testing.assert_close(most_anomalous_centroid(points, scores, 20), points[3])


def test_adaclip_training_lowers_the_loss_and_resumes(weights_dir, train_root, tmp_path):
    clip = find_weights("clip", weights_dir)[1]
    options = TrainOptions("mvtec", train_root, tmp_path / "full", clip, epochs=10, batch_size=8, learning_rate=1e-2,
                           limit=8, progress=False)
    _, losses = train_adaclip(options)
    assert len(losses) == 10 and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    # stop after 4 epochs, then resume to 10: the same prompts as one uninterrupted run
    cut = TrainOptions("mvtec", train_root, tmp_path / "cut", clip, epochs=4, batch_size=8, learning_rate=1e-2, limit=8, progress=False)
    train_adaclip(cut)
    resumed_path, resumed_losses = train_adaclip(TrainOptions(**{**cut.__dict__, "epochs": 10}))
    assert len(resumed_losses) == 6
    assert resumed_losses == pytest.approx(losses[4:], rel=1e-4)
    log = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert log["epoch"] == 10
    assert log["losses"] == pytest.approx(losses, rel=1e-4)  # the whole history, not only the resumed epochs


def test_adaclip_save_load_round_trip(backbone, tmp_path):
    torch.manual_seed(0)
    model = AdaClip(backbone, AdaClipSettings(default_layers(backbone.depth), 3, 2))
    with torch.no_grad():  # something other than the initial state
        model.prompts.visual_dynamic.weight.normal_()
        model.prompts.text_dynamic.weight.normal_()
    before = model.segment(image(3))
    path = model.save(tmp_path / "prompts.pt")
    loaded = AdaClip.load(path, backbone)
    after = loaded.segment(image(3))
    np.testing.assert_array_equal(after.anomaly_map, before.anomaly_map)
    assert after.image_score == before.image_score and 0 <= after.image_score <= 1
    assert loaded.settings.layers == (1, 2) and default_layers(24) == (6, 12, 18, 24)
    with pytest.raises(WeightsError, match="AdaCLIP prompt weights not found"):
        AdaClip.load(tmp_path / "none.pt", backbone)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not an AdaCLIP prompt checkpoint"):
        AdaClip.load(tmp_path / "bad.pt", backbone)
    with pytest.raises(WeightsError, match="do not exist"):
        AdaClip(backbone, AdaClipSettings((1, 7)))
    with pytest.raises(WeightsError, match="prompt depth 4 does not fit"):
        AdaClip(backbone, AdaClipSettings((1, 2), 5, 4))


def test_adaclip_hybrid_prompts_reach_every_prompted_layer_of_both_encoders(backbone):
    torch.manual_seed(0)
    model = AdaClip(backbone)
    assert model.settings.prompt_depth == min(4, backbone.depth, backbone.text_depth) == 2  # capped by the tiny CLIP
    pixels = backbone.preprocess([image(1), image(2)])
    tokens = backbone.tokens(pixels)
    plain_cls, plain_hidden = backbone.encode_tokens(tokens, (1, 2))
    query = torch.nn.functional.normalize(plain_cls, dim=-1)
    prompted_cls, prompted_hidden = backbone.encode_tokens(tokens, (1, 2), model.prompts.visual(query))
    assert [h.shape for h in prompted_hidden] == [h.shape for h in plain_hidden] == [(2, 1 + backbone.grid ** 2, backbone.clip.config.vision_config.hidden_size)] * 2
    assert not torch.allclose(prompted_cls, plain_cls)  # the visual prompts take part in attention
    patch_maps, image_probability = model(pixels)
    (patch_maps.mean() + image_probability.mean()).backward()
    prompts = model.prompts
    for name, gradient in (("visual layer 1", prompts.visual_static.grad[0]), ("visual layer 2", prompts.visual_static.grad[1]),
                           ("text layer 1", prompts.text_static.grad[0]), ("text layer 2", prompts.text_static.grad[1]),
                           ("visual dynamic", prompts.visual_dynamic.weight.grad), ("text dynamic", prompts.text_dynamic.weight.grad)):
        assert gradient.abs().sum() > 0, name
    assert all(p.grad is None for p in backbone.clip.parameters())  # CLIP stays frozen


def test_cli_train_segment_and_eval_with_clip_methods(capsys, weights_dir, train_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "adaclip", "--dataset", "mvtec", "--root", str(train_root), "-o", str(ckpt), "--epochs", "1",
                 "--limit", "4", "--weights", str(weights_dir), "--no-progress"]) == 0
    assert "AdaCLIP prompts: " in capsys.readouterr().err and (ckpt / "adaclip_prompts.pt").is_file()
    picture = next((train_root / "washer" / "test" / "hole").glob("*.png"))
    for method, extra in (("winclip", []), ("adaclip", ["--adaclip-prompts", str(ckpt / "adaclip_prompts.pt")])):
        out = tmp_path / method
        code = main(["segment", str(picture), "--method", method, "--category", "washer", "-o", str(out),
                     "--weights", str(weights_dir), "--no-progress", *extra])
        capsys.readouterr()
        record = json.loads((out / f"{picture.name}.json").read_text())
        assert code == 0 and record["method"] == method and np.load(out / f"{picture.name}.npy").shape == (64, 64)
    code = main(["eval", "--dataset", "mvtec", "--root", str(train_root), "--method", "adaclip", "--adaclip-prompts",
                 str(ckpt / "adaclip_prompts.pt"), "-o", str(tmp_path / "res"), "--weights", str(weights_dir), "--no-progress"])
    assert code == 0 and "| **mean** |" in capsys.readouterr().out
    assert (tmp_path / "res" / "adaclip" / "table.md").is_file()
    assert main(["segment", str(picture), "--method", "nope", "-o", str(tmp_path / "x"), "--weights", str(weights_dir)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    code = main(["segment", str(picture), "--method", "winclip", "--prompt", "crack", "-o", str(tmp_path / "y"),
                 "--weights", str(weights_dir)])
    assert code == 2 and "--prompt only apply to --method iapas, not winclip" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
