"""AnomalyCLIP and the shared V-V attention on a tiny random CLIP loaded through the real loader."""
import dataclasses
import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.errors import WeightsError
from iapas.methods.anomalyclip.model import AnomalyClip, AnomalyClipSettings
from iapas.methods.anomalyclip.train import train_anomalyclip
from iapas.prompt_learning import TrainOptions
from iapas.prompt_learning.vision import encode_dual_path, input_size_for, tokens_at, vv_attention, vv_start_for


def image(seed=0, shape=(50, 60, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def attention_block(width, heads):
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPAttention

    return CLIPAttention(CLIPVisionConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=4))


def test_vv_attention_on_a_hand_case():
    block = attention_block(2, 1)
    with torch.no_grad():  # identity value and output projections: the values are the tokens themselves
        for projection in (block.v_proj, block.out_proj, block.q_proj, block.k_proj):
            projection.weight.copy_(torch.eye(2))
            projection.bias.zero_()
        block.q_proj.weight.mul_(5)  # queries and keys must play no part
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    scale = 2 ** -0.5
    # token i attends to j with weight exp(v_i . v_j * scale) / sum_j, v = the tokens
    dots = [[1, 0, 1], [0, 1, 1], [1, 1, 2]]
    expected = []
    for row in dots:
        weights = [math.exp(d * scale) for d in row]
        total = sum(weights)
        expected.append([sum(w / total * t[c] for w, t in zip(weights, [[1, 0], [0, 1], [1, 1]])) for c in range(2)])
    torch.testing.assert_close(vv_attention(block, tokens), torch.tensor([expected]))


def test_vv_attention_splits_heads_like_a_per_head_computation():
    torch.manual_seed(0)
    block = attention_block(4, 2)
    tokens = torch.randn(1, 5, 4)
    values = block.v_proj(tokens)[0]
    heads = []
    for head in range(2):
        v = values[:, 2 * head:2 * head + 2]
        heads.append(torch.softmax(v @ v.t() / math.sqrt(2), dim=-1) @ v)
    expected = block.out_proj(torch.cat(heads, dim=-1))[None]
    torch.testing.assert_close(vv_attention(block, tokens), expected)


def test_dual_path_keeps_clip_and_adds_vv_from_its_layer(backbone):
    pixels = backbone.preprocess([image()])
    tokens = backbone.tokens(pixels)
    torch.testing.assert_close(tokens_at(backbone, pixels), tokens)  # the model's own size: no interpolation
    layers = backbone.clip.vision_model.encoder.layers
    last, (first, second) = encode_dual_path(backbone, tokens, 2, (1, 2))
    plain = backbone.clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(last, plain[2])  # the class token's path is CLIP's own
    torch.testing.assert_close(first, plain[1])  # before the V-V layer: ordinary tokens
    expected = plain[1] + vv_attention(layers[1].self_attn, layers[1].layer_norm1(plain[1]))  # input + V-V, no MLP
    torch.testing.assert_close(second, expected)
    bigger = tokens_at(backbone, backbone.preprocess([image()], 48))
    assert bigger.shape == (1, 1 + 36, tokens.shape[-1])
    assert input_size_for(336, 14) == 518 and vv_start_for(24) == 6 and vv_start_for(12) == 3


def released_state(settings: AnomalyClipSettings, width: int, seed: int = 0) -> OrderedDict:
    """A state dict with the keys, shapes and dtypes of zqhang/AnomalyCLIP's AnomalyCLIP_PromptLearner (random values)."""
    generator = torch.Generator().manual_seed(seed)
    n, context = settings.prompt_length, 77
    state = OrderedDict()
    state["ctx_pos"] = torch.randn(1, 1, n, width, generator=generator).half()  # built in CLIP's fp16 dtype
    state["ctx_neg"] = torch.randn(1, 1, n, width, generator=generator).half()
    for i in range(settings.text_depth - 1):
        state[f"compound_prompts_text.{i}"] = torch.randn(settings.text_length, width, generator=generator)
    for i in range(settings.text_depth - 1):  # defined but never called by the reference's forward
        state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width, generator=generator)
        state[f"compound_prompt_projections.{i}.bias"] = torch.randn(896, generator=generator)
    for sign, words in (("pos", 2), ("neg", 3)):  # frozen word embeddings and token ids, recomputed by iapas
        state[f"token_prefix_{sign}"] = torch.randn(1, 1, 1, width, generator=generator).half()
        state[f"token_suffix_{sign}"] = torch.randn(1, 1, context - 1 - n, width, generator=generator).half()
        state[f"tokenized_prompts_{sign}"] = torch.zeros(1, 1, context, dtype=torch.int32)
    return state


def test_released_checkpoint_format_loads_and_round_trips(backbone, weights_dir, tmp_path, capsys):
    settings = AnomalyClipSettings.for_backbone(backbone)
    width = backbone.clip.config.text_config.hidden_size
    state = released_state(settings, width)
    released = tmp_path / "epoch_15.pth"
    torch.save({"prompt_learner": state}, released)  # as zqhang/AnomalyCLIP train.py saves it
    model = AnomalyClip.load(released, backbone)
    # shapes read off the tensors; the map layer the official train.sh/test.sh's (--features_list 24): the last only
    assert model.settings == dataclasses.replace(settings, layers=(backbone.depth,))
    torch.testing.assert_close(model.prompts.ctx_neg, state["ctx_neg"].float())
    torch.testing.assert_close(model.prompts.compound_prompts_text[0], state["compound_prompts_text.0"])
    before = model.segment(image(1))
    assert before.anomaly_map.shape == (50, 60) and 0 <= before.image_score <= 1
    again = AnomalyClip.load(model.save(tmp_path / "ours.pt"), backbone)
    after = again.segment(image(1))
    np.testing.assert_array_equal(after.anomaly_map, before.anomaly_map)
    assert after.image_score == before.image_score
    saved = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert set(saved["prompt_learner"]) == {"ctx_pos", "ctx_neg", "compound_prompts_text.0"}  # the reference's names
    picture = tmp_path / "part.png"
    from PIL import Image
    Image.fromarray(image(2)).save(picture)
    code = main(["segment", str(picture), "--method", "anomalyclip", "--prompts", str(released), "-o", str(tmp_path / "out"),
                 "--weights", str(weights_dir), "--no-progress"])
    assert code == 0 and json.loads((tmp_path / "out" / "part.png.json").read_text())["method"] == "anomalyclip"
    capsys.readouterr()
    deep = released_state(AnomalyClipSettings((1, 2), 48, 1, text_depth=9), width)  # ViT-L's depth 9 on a 2-layer text CLIP
    torch.save({"prompt_learner": deep}, tmp_path / "deep.pth")
    with pytest.raises(WeightsError, match="text prompt depth 9 does not fit"):
        AnomalyClip.load(tmp_path / "deep.pth", backbone)
    wide = released_state(settings, width * 2)
    torch.save({"prompt_learner": wide}, tmp_path / "wide.pth")
    with pytest.raises(WeightsError, match="trained on another CLIP"):
        AnomalyClip.load(tmp_path / "wide.pth", backbone)
    code = main(["segment", str(picture), "--method", "anomalyclip", "--prompts", str(tmp_path / "none.pth"),
                 "-o", str(tmp_path / "x"), "--weights", str(weights_dir)])
    assert code == 2 and "anomalyclip prompt weights not found" in capsys.readouterr().err


def test_map_and_image_score_follow_the_reference(backbone):
    torch.manual_seed(1)
    unsmoothed = dataclasses.replace(AnomalyClipSettings.for_backbone(backbone), sigma=0.0)
    model = AnomalyClip(backbone, unsmoothed).eval()
    picture = image(4, (48, 48, 3))  # already the input size: no resizing around the map
    result = model.segment(picture)
    with torch.no_grad():
        text = model.text_features()
        image_embedding, patches = model.encode_image(backbone.preprocess([picture], 48))
    # the class-token score: softmax(cos / 0.07) of the abnormal text
    expected_score = torch.softmax(image_embedding @ text.t() / 0.07, -1)[0, 1]
    assert result.image_score == pytest.approx(float(expected_score), abs=1e-6)
    # the top-left patch's abnormal softmax, averaged over the layers, is the map on pixels 0-3 (bilinear, clamped there)
    first = torch.softmax(patches[0][0] @ text.t() / 0.07, -1)[:, 1].reshape(6, 6)
    second = torch.softmax(patches[1][0] @ text.t() / 0.07, -1)[:, 1].reshape(6, 6)
    assert result.anomaly_map[0:4, 0:4] == pytest.approx(float((first[0, 0] + second[0, 0]) / 2), abs=1e-5)


def test_released_checkpoint_maps_the_last_layer_and_ours_keep_their_layers(backbone, tmp_path):
    settings = AnomalyClipSettings.for_backbone(backbone)
    assert settings.layers == (1, 2)  # iapas's training default on the 2-layer CLIP: several layers
    state = released_state(settings, backbone.clip.config.text_config.hidden_size, seed=3)
    torch.save({"prompt_learner": state}, tmp_path / "epoch_15.pth")
    released = AnomalyClip.load(tmp_path / "epoch_15.pth", backbone)
    unsmoothed = dataclasses.replace(released.settings, sigma=0.0)
    picture = image(5, (48, 48, 3))  # the input size: the map is the upsampled patch map itself
    last = dataclasses.replace(unsmoothed, layers=(2,))
    both = dataclasses.replace(unsmoothed, layers=(1, 2))
    maps = {}
    for name, chosen in (("released", unsmoothed), ("last", last), ("both", both)):
        model = AnomalyClip(backbone, chosen)
        model.prompts.load_state_dict(released.prompts.state_dict())
        maps[name] = model.eval().segment(picture).anomaly_map
    np.testing.assert_array_equal(maps["released"], maps["last"])  # the layer-24 (last-layer) map
    assert np.abs(maps["released"] - maps["both"]).max() > 1e-4  # not the mean over layers 6, 12, 18, 24
    ours = AnomalyClip(backbone, both).save(tmp_path / "ours.pt")
    assert AnomalyClip.load(ours, backbone).settings.layers == (1, 2)  # iapas's files keep their recorded layers


def test_training_lowers_the_loss_and_resumes(clip_dir, washer_hole_root, tmp_path):
    def options(folder, epochs):
        return TrainOptions("mvtec", washer_hole_root, tmp_path / folder, clip_dir, epochs=epochs, batch_size=4,
                            learning_rate=1e-2, limit=4, progress=False)

    _, losses = train_anomalyclip(options("full", 8))
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2])
    train_anomalyclip(options("cut", 3))
    path, resumed = train_anomalyclip(options("cut", 8))
    assert len(resumed) == 5 and resumed == pytest.approx(losses[3:], rel=1e-4)  # same run as without the stop
    log = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert log["epoch"] == 8 and log["losses"] == pytest.approx(losses, rel=1e-4)
    assert torch.load(path, weights_only=True)["iapas"]["epochs_done"] == 8


def test_cli_train_and_eval(capsys, weights_dir, washer_hole_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "anomalyclip", "--dataset", "mvtec", "--root", str(washer_hole_root), "-o", str(ckpt), "--epochs", "1",
                 "--limit", "2", "--layers", "2", "--weights", str(weights_dir), "--no-progress"]) == 0
    assert "AnomalyCLIP prompts: " in capsys.readouterr().err
    prompts = ckpt / "anomalyclip_prompts.pt"
    assert torch.load(prompts, weights_only=True)["iapas"]["settings"]["layers"] == [2]
    code = main(["eval", "--dataset", "mvtec", "--root", str(washer_hole_root), "--method", "anomalyclip", "--prompts",
                 str(prompts), "-o", str(tmp_path / "res"), "--weights", str(weights_dir), "--no-progress", "--limit", "3"])
    assert code == 0 and "| **mean** |" in capsys.readouterr().out
    code = main(["train", "anomalyclip", "--dataset", "mvtec", "--root", str(washer_hole_root), "-o", str(tmp_path / "bad"),
                 "--layers", "7", "--weights", str(weights_dir), "--no-progress"])
    assert code == 2 and "ViT layer 7 does not exist" in capsys.readouterr().err


def test_reference_defaults_on_a_vit_l_14_336_shape():
    from types import SimpleNamespace

    from iapas.methods.faprompt.model import FAPromptSettings

    vit_l = SimpleNamespace(depth=24, image_size=336, patch_size=14, text_depth=12)
    assert AnomalyClipSettings.for_backbone(vit_l) == AnomalyClipSettings((6, 12, 18, 24), 518, 6, 12, 9, 4, 4.0)
    assert FAPromptSettings.for_backbone(vit_l) == FAPromptSettings(518, 6, 24, 5, 2, 10, 10, 9, 4, 10.0)


def test_generic_prompts_option_reaches_adaclip(backbone, weights_dir, tmp_path, capsys):
    from PIL import Image

    from iapas.methods.adaclip.model import AdaClip

    prompts = AdaClip(backbone).save(tmp_path / "ada.pt")
    picture = tmp_path / "part.png"
    Image.fromarray(image(5)).save(picture)
    code = main(["segment", str(picture), "--method", "adaclip", "--prompts", str(prompts), "-o", str(tmp_path / "out"),
                 "--weights", str(weights_dir), "--no-progress"])
    capsys.readouterr()
    assert code == 0 and json.loads((tmp_path / "out" / "part.png.json").read_text())["method"] == "adaclip"


def reference_dual_path(visual, pixels, vv_from, layers):
    """AnomalyCLIP's image side written out on open_clip's own modules (AnomalyCLIP_lib/AnomalyCLIP.py, DPAM, ffn False)."""
    import torch.nn.functional as F

    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    grid = int(x.shape[1] ** 0.5)
    trained = int((visual.positional_embedding.shape[0] - 1) ** 0.5)
    square = visual.positional_embedding[1:].reshape(1, trained, trained, -1).permute(0, 3, 1, 2)
    square = F.interpolate(square, (grid, grid), mode="bilinear").reshape(1, -1, grid * grid).transpose(1, 2)[0]
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1)
    x = visual.ln_pre(x + torch.cat([visual.positional_embedding[:1], square]))
    original, vv, collected = x, None, []
    for index, block in enumerate(visual.transformer.resblocks, start=1):
        if index < vv_from:
            original = block(original)
        else:
            attention = block.attn
            heads, width = attention.num_heads, original.shape[-1]
            q, k, v = F.linear(block.ln_1(original), attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.reshape(len(t), -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
            scale = (width // heads) ** -0.5

            def mix(a, b, values):
                out = ((a @ b.transpose(-2, -1)) * scale).softmax(-1) @ values
                return attention.out_proj(out.transpose(1, 2).reshape(len(out), -1, width))

            vv = (original if vv is None else vv) + mix(v, v, v)
            original = original + mix(q, k, v)
            original = original + block.mlp(block.ln_2(original))
        if index in layers:
            collected.append(original if vv is None else vv)
    image = original[:, 0] @ visual.proj  # x_ori[0] @ proj: no ln_post on the class token
    return image, [visual.ln_post(tokens) @ visual.proj for tokens in collected]


def test_image_and_text_sides_equal_the_reference_written_on_open_clip(tmp_path):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=3, width=128, head_width=64, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.save(model.state_dict(), tmp_path / "ViT-tiny.pt")
    backbone = ClipBackbone(tmp_path / "ViT-tiny.pt")  # converted exactly into transformers' CLIP
    ours = AnomalyClip(backbone, AnomalyClipSettings((1, 2, 3), 48, 2, text_depth=2))
    pixels = torch.randn(2, 3, 48, 48)  # 6 x 6 patches on a model trained at 4 x 4
    image_embedding, patches = ours.encode_image(pixels)
    with torch.no_grad():
        expected_image, expected_patches = reference_dual_path(model.visual, pixels, 2, (1, 2, 3))
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(image_embedding, unit(expected_image, dim=-1), atol=1e-5, rtol=1e-4)
    for got, expected in zip(patches, expected_patches):
        torch.testing.assert_close(got, unit(expected[:, 1:], dim=-1), atol=1e-5, rtol=1e-4)
    # the text side: AnomalyCLIP's encode_text_learn on open_clip's text transformer, learned tokens inserted by hand
    import open_clip

    with torch.no_grad():
        ours.prompts.ctx_pos.normal_()
        ours.prompts.ctx_neg.normal_()
        ours.prompts.compound_prompts_text[0].normal_()
        got = ours.text_features()
        length = ours.settings.prompt_length
        ids = open_clip.tokenize([" ".join(["X"] * length) + " object.", " ".join(["X"] * length) + " damaged object."])
        x = model.token_embedding(ids)
        x = torch.cat([x[:, :1], torch.cat([ours.prompts.ctx_pos[0], ours.prompts.ctx_neg[0]]), x[:, 1 + length:]], dim=1)
        x = x + model.positional_embedding
        for index, block in enumerate(model.transformer.resblocks):
            if index == 1:  # layer 2 gets the deep tokens at positions 1..4
                deep = ours.prompts.compound_prompts_text[0].expand(2, -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + deep.shape[1]:]], dim=1)
            x = block(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        expected = x[torch.arange(2), ids.argmax(dim=-1)] @ model.text_projection
    torch.testing.assert_close(got, unit(expected, dim=-1), atol=1e-5, rtol=1e-4)


def test_resizing_matches_the_references_pil_bicubic():
    from types import SimpleNamespace

    from PIL import Image

    from iapas.prompt_learning.vision import reference_pixels

    identity = SimpleNamespace(device="cpu", mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1))
    picture = image(6, (96, 128, 3))  # noise: the worst case for a resize that does not filter when it shrinks
    ours = reference_pixels(identity, [picture], 48)[0].permute(1, 2, 0).numpy() * 255
    pil = np.asarray(Image.fromarray(picture).resize((48, 48), Image.BICUBIC)).astype(np.float64)
    assert np.abs(ours - pil).max() < 1.0  # PIL rounds to whole grey levels
