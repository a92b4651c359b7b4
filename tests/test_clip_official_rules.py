"""The official recipe's rules for AnomalyCLIP and FAPrompt, one by one, on hand cases and the tiny demo CLIP.

Their equality with the authors' code as a whole is tests/test_clip_official.py.
"""
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from PIL import Image

from iapas.cli import main
from iapas.config import build_config
from iapas.errors import ValueRangeError
from iapas.methods.anomalyclip.model import AnomalyClip, AnomalyClipSettings
from iapas.methods.anomalyclip.train import anomalyclip_loss
from iapas.methods.faprompt.model import FAPrompt
from iapas.prompt_learning import dice_loss, two_class_focal_loss
from iapas.prompt_learning.rules import PromptRules
from iapas.prompt_learning.text_prompts import encode_prompted
from iapas.prompt_learning.training import mixed_precision, resized_mask
from iapas.prompt_learning.vision import pil_pixels, reference_pixels, upsample_patches

OFFICIAL = PromptRules.from_config(build_config("official").clip_methods)
OFFICIAL_KEYS_ANOMALYCLIP = {"ctx_pos", "ctx_neg", "token_prefix_pos", "token_suffix_pos", "token_prefix_neg",
                             "token_suffix_neg", "tokenized_prompts_pos", "tokenized_prompts_neg"}


def image(seed=0, shape=(50, 60, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_rules_are_validated_in_one_line():
    with pytest.raises(ValueRangeError, match="clip_methods.faprompt_prior_patches must be one of top, first, got 'best'"):
        build_config(data={"clip_methods": {"faprompt_prior_patches": "best"}})
    assert build_config("official", {"clip_methods": {"anomalyclip_focal": "binary"}}).clip_methods.anomalyclip_focal == "binary"


def test_faprompt_official_rule_feeds_the_first_patches(backbone):
    torch.manual_seed(0)
    model = FAPrompt(backbone, rules=OFFICIAL).eval()
    pixels = model.preprocess([image(1), image(2)])
    with torch.no_grad():
        outputs = model(pixels)
        _, patches = model.encode_image(pixels)
        first = model.prompts.patch_meta_net(patches[:, :10].flatten(1))
        model.rules = PromptRules()  # the paper's top-10
        top = model(pixels).bias
    torch.testing.assert_close(outputs.bias, first)  # patches 0..9, whatever the scores say
    assert (outputs.bias - top).abs().max() > 1e-4


def test_deep_prompts_rounded_to_half_precision(backbone):
    model = AnomalyClip(backbone)
    torch.manual_seed(0)
    with torch.no_grad():
        for prompt in model.prompts.compound_prompts_text:
            prompt.copy_(torch.randn_like(prompt))  # values fp16 cannot hold exactly
    deep = model.prompts.compound_prompts_text
    sentences = model.sentences[:1]
    with torch.no_grad():
        ours = encode_prompted(backbone, sentences, model.eos[:1], deep, half_deep=True)
        rounded = encode_prompted(backbone, sentences, model.eos[:1], [p.half().float() for p in deep])
        full = encode_prompted(backbone, sentences, model.eos[:1], deep)
    torch.testing.assert_close(ours, rounded, rtol=0, atol=0)
    assert (ours - full).abs().max() > 0
    model.rules = OFFICIAL
    with torch.no_grad():
        assert model.text_features().shape == (2, backbone.embed_dim)


def test_uint8_pil_resize_of_the_input(backbone):
    picture = image(3, (37, 53, 3))
    ours = pil_pixels(backbone, [picture], 48)
    by_hand = np.asarray(Image.fromarray(picture).resize((48, 48), Image.BICUBIC)).astype(np.float32) / 255
    expected = (torch.from_numpy(by_hand).permute(2, 0, 1)[None] - backbone.mean) / backbone.std
    torch.testing.assert_close(ours, expected)
    grey = (reference_pixels(backbone, [picture], 48) - ours) * backbone.std * 255
    assert 0.3 < grey.abs().max() < 40  # the float path is about a grey level away, more at sharp edges
    model = AnomalyClip(backbone, rules=OFFICIAL)
    torch.testing.assert_close(model.preprocess([picture]), pil_pixels(backbone, [picture], model.input_size))


def test_training_masks_bilinear_then_half():
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = mask[1, 2] = True  # a 1 x 2 block
    nearest = resized_mask(mask, 6)
    bilinear = resized_mask(mask, 6, "bilinear")
    grey = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((6, 6), Image.BILINEAR)) / 255.0
    assert bilinear.tolist() == (grey > 0.5).astype(np.float32).tolist()
    assert nearest.tolist() == mask[np.array([0, 0, 1, 2, 2, 3])][:, np.array([0, 0, 1, 2, 2, 3])].astype(np.float32).tolist()
    assert bilinear.sum() != nearest.sum()


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_official_training_precision_and_loss(backbone):
    model = AnomalyClip(backbone, rules=OFFICIAL)
    assert model.train_precision == "fp32" and model.mask_rule == "bilinear"
    assert isinstance(mixed_precision("cuda", model.train_precision), nullcontext)  # no autocast, as train.py
    assert not isinstance(mixed_precision("cuda"), nullcontext)  # the default: bf16 autocast on a GPU
    torch.manual_seed(0)
    pixels = model.preprocess([image(4), image(5)])
    masks = torch.zeros(2, model.input_size, model.input_size)
    masks[0, 10:30, 5:20] = 1
    labels = torch.tensor([1.0, 0.0])
    probabilities, logits = model(pixels)
    size = model.input_size
    maps = [upsample_patches(probabilities[:, i], size) for i in range(probabilities.shape[1])]
    two_class = [two_class_focal_loss(m, masks) + dice_loss(m[:, 1], masks) + dice_loss(m[:, 0], 1 - masks) for m in maps]
    expected = 4 * sum(two_class) + torch.nn.functional.cross_entropy(logits, labels.long())  # train.py: lam = 4
    torch.testing.assert_close(anomalyclip_loss(model, pixels, masks, labels), expected)


def test_train_save_format_official_and_to_official(capsys, weights_dir, washer_hole_root, tmp_path):
    base = ["train", "anomalyclip", "--dataset", "mvtec", "--root", str(washer_hole_root), "--epochs", "1", "--limit", "2",
            "--weights", str(weights_dir), "--no-progress", "--recipe", "official"]
    assert main(base + ["-o", str(tmp_path / "official"), "--save-format", "official"]) == 0
    assert main(base + ["-o", str(tmp_path / "ours")]) == 0
    capsys.readouterr()
    official = torch.load(tmp_path / "official" / "anomalyclip_prompts.pt", weights_only=True)
    ours = torch.load(tmp_path / "ours" / "anomalyclip_prompts.pt", weights_only=True)
    assert OFFICIAL_KEYS_ANOMALYCLIP <= set(official["prompt_learner"]) and not OFFICIAL_KEYS_ANOMALYCLIP <= set(ours["prompt_learner"])
    assert any(key.startswith("compound_prompt_projections.") for key in official["prompt_learner"])
    for name, tensor in ours["prompt_learner"].items():  # the same training: the learned values agree
        torch.testing.assert_close(official["prompt_learner"][name], tensor)
    converted = tmp_path / "epoch_1.pth"
    assert main(["weights", "to-official", "anomalyclip", str(tmp_path / "ours" / "anomalyclip_prompts.pt"), "-o", str(converted),
                 "--weights", str(weights_dir)]) == 0
    again = torch.load(converted, weights_only=True)
    assert set(again["prompt_learner"]) == set(official["prompt_learner"])
    assert again["iapas"]["settings"] == ours["iapas"]["settings"] and again["iapas"]["epochs_done"] == 1
    capsys.readouterr()
    released = tmp_path / "released.pth"
    torch.save({"prompt_learner": official["prompt_learner"]}, released)
    assert main(["weights", "to-official", "anomalyclip", str(released), "-o", str(tmp_path / "x.pth"), "--weights", str(weights_dir)]) == 2
    assert "already in its authors' layout" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's choices
        main(["train", "anomalyclip", "--dataset", "mvtec", "--root", str(washer_hole_root), "-o", str(tmp_path / "y"),
              "--save-format", "onnx", "--weights", str(weights_dir)])


def test_faprompt_official_layout_reads_back_the_same(backbone, tmp_path):
    torch.manual_seed(3)
    model = FAPrompt(backbone, rules=OFFICIAL).eval()
    path = model.save(tmp_path / "epoch_7.pth", layout="official")
    state = torch.load(path, weights_only=True)["prompt_learner"]
    assert state["tokenized_prompts_neg"].shape == (1, 10, 77) and state["token_suffix_neg"].shape[2] == 77 - 1 - 5 - 2
    assert {"patch_meta_net.linear1.weight", "patch_meta_net.linear2.bias"} <= set(state)
    again = FAPrompt.load(path, backbone, OFFICIAL)
    np.testing.assert_array_equal(again.segment(image(6)).anomaly_map, model.segment(image(6)).anomaly_map)


def test_recipe_official_reaches_the_built_methods(backbone, weights_dir, tmp_path):
    from iapas.methods import METHODS

    torch.manual_seed(4)
    prompts = {"faprompt": FAPrompt(backbone).save(tmp_path / "fa.pt"), "anomalyclip": AnomalyClip(backbone).save(tmp_path / "ac.pt")}
    for recipe, rules in (("official", OFFICIAL), ("iapas", PromptRules())):
        for method, path in prompts.items():
            config = build_config(recipe, {"weights_dir": str(weights_dir), "clip_methods": {"prompts": str(path)}})
            assert METHODS.get(method)(config, ()).rules == rules


def test_faprompt_trains_under_the_official_recipe(capsys, weights_dir, washer_hole_root, tmp_path):
    assert main(["train", "faprompt", "--dataset", "mvtec", "--root", str(washer_hole_root), "--epochs", "1", "--limit", "2",
                 "--weights", str(weights_dir), "--no-progress", "--recipe", "official", "--save-format", "official",
                 "-o", str(tmp_path / "fa")]) == 0
    capsys.readouterr()
    saved = torch.load(tmp_path / "fa" / "faprompt_prompts.pt", weights_only=True)
    assert {"tokenized_prompts_neg", "patch_meta_net.linear1.weight"} <= set(saved["prompt_learner"])
    assert saved["iapas"]["method"] == "faprompt" and saved["iapas"]["epochs_done"] == 1
