"""GenCLIP on a tiny random CLIP loaded through the real loader: the paper's rules on hand cases, training, checkpoints, CLI."""
import json
import math

import numpy as np
import pytest
import torch

from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.errors import WeightsError
from iapas.methods.genclip import GenClip, GenClipArchitecture, GenClipSettings, train
from iapas.methods.genclip.model import default_layers
from iapas.methods.genclip.prompts import filter_class_name
from iapas.methods.genclip.scoring import combine_branches, top_n_image_score
from iapas.prompt_learning import TrainOptions
from iapas.weights.manifest import find_weights


@pytest.fixture(scope="module")
def backbone(weights_dir):
    return ClipBackbone(find_weights("clip", weights_dir)[1])


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    spec = SynthSpec(categories=("washer", "tile"), defects=("hole", "stain"), train_good=1, test_good=2, per_defect=3, size=64)
    return write_synth_dataset(tmp_path_factory.mktemp("aux"), spec)


def image(seed=0, shape=(70, 90, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def model_at(backbone, size=64, **options):
    torch.manual_seed(0)
    return GenClip(backbone, GenClipSettings.for_backbone(backbone, input_size=size), **options)


def test_class_name_filtering_on_hand_cases(backbone):
    asked = []

    def encode(sentences):  # a controlled CLIP: the class sentence along x, the generic one along y
        asked.append(list(sentences))
        return torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    assert filter_class_name("pcb2", torch.tensor([0.9, 0.1]), encode) == "pcb"  # numbers removed, CLIP knows "pcb"
    assert asked[-1] == ["A photo of a pcb", "A photo of an object"]  # the paper's two sentences
    assert filter_class_name("pipe_fryum", torch.tensor([0.2, 0.8]), encode) == "object"  # closer to the generic one
    assert asked[-1][0] == "A photo of a pipe fryum"
    assert filter_class_name("fryum", torch.tensor([1.0, 1.0]), encode) == "fryum"  # a tie keeps the name
    count = len(asked)
    assert filter_class_name("02", torch.tensor([1.0, 0.0]), encode) == "object"  # nothing left after the numbers
    assert len(asked) == count  # ... and no CLIP call was needed
    # the real (tiny) CLIP text encoder: an image embedded exactly like one of the two sentences picks that one
    known = backbone.encode_text(["A photo of a washer"])[0]
    generic = backbone.encode_text(["A photo of an object"])[0]
    assert filter_class_name("washer1", known, backbone.encode_text) == "washer"
    assert filter_class_name("washer1", generic, backbone.encode_text) == "object"


def test_image_score_of_eq_9_10_on_known_maps():
    seg = np.zeros((100, 100), np.float32)
    seg.flat[:500] = 1.0  # the top N1 = 500
    seg.flat[500:2500] = 0.5  # the next 2000 complete the top N2 = 2500
    weight = math.e / ((500 * math.e + 2000 * math.exp(0.5)) / 2500)  # Eq. 9 by hand
    assert top_n_image_score(seg) == pytest.approx(weight * 1.0)  # Eq. 10: w * mean(top N1)
    small = np.array([[5.0, 4.0], [3.0, 2.0]])
    expected = (math.exp(5) + math.exp(4)) / 2 / ((math.exp(5) + math.exp(4) + math.exp(3) + math.exp(2)) / 4) * 4.5
    assert top_n_image_score(small, 2, 4) == pytest.approx(expected)
    assert top_n_image_score(small) == pytest.approx(1.0 * 3.5)  # N1, N2 above the pixel count: both are every pixel
    assert top_n_image_score(np.full((60, 60), 800.0)) == pytest.approx(800.0)  # no overflow in exp


def test_alpha_combines_the_two_branches_and_segment_uses_it(backbone, monkeypatch):
    vision = torch.tensor([0.5, 0.25])[:, None, None].expand(2, 4, 4)  # two layers' S_V
    query = torch.tensor([0.1, 0.3])[:, None, None].expand(2, 4, 4)  # two layers' S_Q
    combined = combine_branches(vision, query)
    torch.testing.assert_close(combined, torch.full((4, 4), 0.8 * 0.75 + 0.2 * 0.4))  # Eq. 8 with alpha 0.8, by hand
    torch.testing.assert_close(combine_branches(vision, query, 1.0), torch.full((4, 4), 0.75))
    model = model_at(backbone)
    assert model.settings.layers == (1, 2) and default_layers(24) == (6, 12, 18, 24)

    def known_branches(pixels, class_words, query_branch=True):
        return vision[None, :, :1, :1].expand(1, 2, 64, 64), query[None, :, :1, :1].expand(1, 2, 64, 64)

    monkeypatch.setattr(model, "forward", known_branches)
    result = model.segment(image(1))
    assert result.anomaly_map.shape == (70, 90)  # the input's resolution
    np.testing.assert_allclose(result.anomaly_map, 0.68 / 2, rtol=1e-5)  # S_seg divided by L = 2 into [0, 1]
    assert result.image_score == pytest.approx(0.68, rel=1e-5)  # Eq. 9-10 on S_seg itself: w = 1 on a flat map


def test_prompts_reach_both_encoders_paths_and_clip_stays_frozen(backbone):
    model = model_at(backbone)
    pixels = backbone.preprocess([image(1), image(2)])
    assert pixels.shape[-1] == 64 and backbone.grid == 8  # 2x CLIP's 32 px: position embeddings interpolated
    positions = backbone.position_embeddings(64)
    assert positions.shape[0] == 65 and torch.equal(positions[0], backbone.clip.vision_model.embeddings.position_embedding.weight[0])
    # Eq. 2 with V_P = 0 (MLP_T starts at zero): the vision-enhanced prompt for "object" is T_Q itself
    vision_maps, query_maps = model(pixels, ["object", "object"])
    torch.testing.assert_close(vision_maps, query_maps)
    with torch.no_grad():
        for linear in model.prompts.vision_prompt:
            linear.weight.normal_(0, 0.5)
    vision_maps, query_maps = model(pixels, ["object", "object"])
    assert not torch.allclose(vision_maps, query_maps)  # now the image's layer features enter the text prompts
    assert vision_maps.shape == (2, 2, 64, 64) and 0 <= float(vision_maps.detach().min()) and float(vision_maps.detach().max()) <= 1
    masks = torch.zeros(2, 64, 64)
    masks[:, 20:40, 20:40] = 1
    loss = model.loss(pixels, masks, torch.ones(2), ["washer", "tile"])
    assert float(model.loss(pixels, masks, torch.ones(2), ["hazelnut", "tile"]).detach()) != pytest.approx(float(loss.detach()))  # names count
    loss.backward()
    prompts = model.prompts
    for name, gradient in (("N_P", prompts.state.grad[0]), ("A_P", prompts.state.grad[1]), ("Q_P", prompts.query.grad),
                           ("modified token, text layer 2", prompts.modified.grad[0]),
                           ("MLP_T layer 1", prompts.vision_prompt[0].weight.grad), ("MLP_I layer 2", prompts.patch_projection[1].weight.grad)):
        assert gradient.abs().sum() > 0, name
    assert all(p.grad is None for p in backbone.clip.parameters())  # CLIP stays frozen


def test_training_lowers_the_loss_and_resumes(weights_dir, train_root, tmp_path):
    clip = find_weights("clip", weights_dir)[1]
    architecture = GenClipArchitecture(input_size=32)
    options = TrainOptions("mvtec", train_root, tmp_path / "full", clip, epochs=8, batch_size=8, learning_rate=1e-2,
                           limit=8, progress=False)
    _, losses = train(options, architecture)
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2])
    cut = TrainOptions(**{**options.__dict__, "out_dir": tmp_path / "cut", "epochs": 3})
    train(cut, architecture)
    resumed_path, resumed_losses = train(TrainOptions(**{**cut.__dict__, "epochs": 8}), architecture)
    assert len(resumed_losses) == 5 and resumed_losses == pytest.approx(losses[3:], rel=1e-4)  # continues at epoch 4
    log = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert log["epoch"] == 8 and log["losses"] == pytest.approx(losses, rel=1e-4)
    assert torch.load(resumed_path, weights_only=True)["epochs_done"] == 8


def test_save_load_round_trip_gives_identical_maps(backbone, tmp_path):
    model = model_at(backbone)
    with torch.no_grad():  # something other than the initial state
        for linear in model.prompts.vision_prompt:
            linear.weight.normal_(0, 0.5)
        model.prompts.query.normal_()
    model.prepare("washer", [], "object", tmp_path)
    before = model.segment(image(3))
    path = model.save(tmp_path / "prompts.pt")
    loaded = GenClip.load(path, backbone)
    loaded.prepare("washer", [], "object", tmp_path)
    after = loaded.segment(image(3))
    np.testing.assert_array_equal(after.anomaly_map, before.anomaly_map)
    assert after.image_score == before.image_score and after.prompts == before.prompts
    assert loaded.settings == model.settings
    with pytest.raises(WeightsError, match="GenCLIP prompt weights not found"):
        GenClip.load(tmp_path / "none.pt", backbone)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a GenCLIP prompt checkpoint"):
        GenClip.load(tmp_path / "bad.pt", backbone)
    with pytest.raises(WeightsError, match="do not exist"):
        GenClip(backbone, GenClipSettings((1, 7)))


def test_cli_train_segment_and_eval_genclip(capsys, weights_dir, train_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "genclip", "--dataset", "mvtec", "--root", str(train_root), "-o", str(ckpt), "--epochs", "1",
                 "--limit", "4", "--input-size", "32", "--weights", str(weights_dir), "--no-progress"]) == 0
    assert "GenCLIP prompts: " in capsys.readouterr().err and (ckpt / "genclip_prompts.pt").is_file()
    picture = next((train_root / "washer" / "test" / "hole").glob("*.png"))
    prompts = ["--genclip-prompts", str(ckpt / "genclip_prompts.pt")]
    out = tmp_path / "seg"
    code = main(["segment", str(picture), "--method", "genclip", "--category", "washer", "-o", str(out),
                 "--weights", str(weights_dir), "--no-progress", *prompts])
    capsys.readouterr()
    record = json.loads((out / f"{picture.name}.json").read_text())
    heat = np.load(out / f"{picture.name}.npy")
    assert code == 0 and record["method"] == "genclip" and heat.shape == (64, 64) and 0 <= heat.min() <= heat.max() <= 1
    code = main(["eval", "--dataset", "mvtec", "--root", str(train_root), "--categories", "washer", "--limit", "3",
                 "--method", "genclip", *prompts, "-o", str(tmp_path / "res"), "--weights", str(weights_dir), "--no-progress"])
    assert code == 0 and "| **mean** |" in capsys.readouterr().out and (tmp_path / "res" / "genclip" / "table.md").is_file()
    code = main(["segment", str(picture), "--method", "genclip", "--genclip-prompts", str(tmp_path / "missing.pt"),
                 "-o", str(tmp_path / "x"), "--weights", str(weights_dir)])
    assert code == 2 and "GenCLIP prompt weights not found" in capsys.readouterr().err


def test_prompt_layout_equals_clip_on_the_equivalent_sentence(backbone):
    """With learned tokens set to word embeddings, our assembled text path is CLIP's own on the sentence they spell.

    §3.2's template has N_P / A_P right after the start token (where "A" stands) and Q_P after [cls]; no other slot.
    """
    model = model_at(backbone)
    words = backbone.clip.text_model.embeddings.token_embedding

    def embedding(word):
        return words(torch.tensor(backbone.tokenizer(word, add_special_tokens=False)["input_ids"][:1]))[0]

    with torch.no_grad():
        model.prompts.modified = torch.nn.Parameter(torch.zeros(0, 1, embedding("x").shape[0]))  # no deep replacement
        model.prompts.state.copy_(torch.stack([embedding("a"), embedding("a")]))  # N_P, A_P where "A" stands
        model.prompts.query.copy_(torch.stack([embedding("x"), embedding("x")]))
        addition = (embedding("y") - embedding("x"))[None, None]  # Eq. 2: V_Q = Q_P + V_P turns each "x" into "y"
        text = model.text_embeddings(["washer"], torch.stack([torch.zeros_like(addition[0]), addition[0]], dim=1))
    expected = backbone.encode_text(["a photo of a good washer x x object.", "a photo of a damaged washer x x object.",
                                     "a photo of a good washer y y object.", "a photo of a damaged washer y y object."])
    assert text.shape == (1, 2, 2, backbone.embed_dim)  # (images, layers, normal/abnormal, E)
    torch.testing.assert_close(text[0].reshape(4, -1), expected, atol=1e-5, rtol=1e-5)


def test_text_layer_tokens_replace_the_token_after_start_before_every_later_layer(backbone):
    """§3.2 / B.4: one learned token replaces position 1 before each text layer after the first (text depth - 1 of them)."""
    model = model_at(backbone)
    assert model.prompts.modified.shape[0] == backbone.text_depth - 1
    seen = []
    layers = backbone.clip.text_model.encoder.layers
    hooks = [layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone())) for layer in layers]
    try:
        with torch.no_grad():
            model.text_embeddings(["washer"], torch.zeros(1, 1, model.prompts.query.shape[-1]))
    finally:
        for hook in hooks:
            hook.remove()
    first, second = seen[0], seen[1]  # (2 states, T, D) entering text layers 1 and 2
    positions = backbone.clip.text_model.embeddings.position_embedding.weight
    torch.testing.assert_close(first[:, 1], model.prompts.state.detach() + positions[1])  # layer 1: N_P / A_P at position 1
    torch.testing.assert_close(second[:, 1], model.prompts.modified[0, 0].detach().expand(2, -1))  # layer 2: the learned token


def test_eq_4_plain_cosine_and_eq_15_16_losses_on_hand_cases(backbone):
    from iapas.methods.genclip.model import DICE_EPSILON, FOCAL_ALPHA, FOCAL_GAMMA

    model = model_at(backbone)
    # Eq. 4: softmax over the two plain cosines (no temperature); a 1 x 1 grid upsampled bilinearly stays constant
    patches = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0]]]), dim=-1)  # (B, 1, E=2)
    text = torch.tensor([[[0.6, 0.8], [0.0, 1.0]]])  # normal cos 0.6, abnormal cos 0.0
    expected = math.exp(0.0) / (math.exp(0.0) + math.exp(0.6))
    torch.testing.assert_close(model.score_maps(patches, text, 3), torch.full((1, 3, 3), expected))
    # Eq. 15: 1 - 2 sum(pg) / (sum p + sum g + eps), per image
    p = torch.tensor([[[0.8, 0.2], [0.4, 0.0]]])
    g = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    dice = 1 - 2 * (0.8 + 0.4) / (1.4 + 2.0 + DICE_EPSILON)
    assert DICE_EPSILON == pytest.approx(1e-6) and FOCAL_ALPHA == 0.25 and FOCAL_GAMMA == 2.0
    # Eq. 16 (Lin et al.'s alpha-balanced form), summed over the pixels
    focal = -(0.25 * 0.2 ** 2 * math.log(0.8) + 0.75 * 0.2 ** 2 * math.log(0.8)
              + 0.25 * 0.6 ** 2 * math.log(0.4) + 0.75 * 1e-6 ** 2 * math.log(1 - 1e-6))
    maps = p[:, None].expand(1, 2, 2, 2)  # two layers with the same map: Eq. 5 sums them
    original = model.forward
    model.forward = lambda pixels, words, query_branch=True: (maps, None)
    try:
        loss = model.loss(torch.zeros(1, 3, 2, 2), g, torch.ones(1), ["washer"])
    finally:
        model.forward = original
    assert float(loss) == pytest.approx(2 * (focal + dice), rel=1e-5)


def test_clip_resize_is_antialiased_on_a_high_frequency_pattern(backbone):
    """GenCLIP's and CNF's pixels come from ClipBackbone.preprocess: a shrunk 1-pixel checkerboard is flat grey, as PIL gives it.

    Without antialiasing, bicubic sampling at a 3x shrink lands on pixel centres and returns a full-contrast
    checkerboard (aliasing: every value 0 or 1).
    """
    from PIL import Image

    board = ((np.indices((96, 96)).sum(0) % 2) * 255).astype(np.uint8)
    rgb = np.repeat(board[..., None], 3, axis=2)
    pixels = backbone.preprocess([rgb], 32)[0] * backbone.std[0] + backbone.mean[0]  # back to [0, 1]
    assert float((pixels - 0.5).abs().max()) < 0.01  # 127.5 / 255: every output pixel averages both colours
    pil = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.BICUBIC), np.float32) / 255
    np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), pil, atol=1 / 255 + 1e-6)  # PIL's resize, within one grey level
    model = model_at(backbone, size=32)
    seen = []
    original = model.backbone.encode_tokens
    model.backbone.encode_tokens = lambda tokens, *a, **k: (seen.append(tokens), original(tokens, *a, **k))[1]
    try:
        model.class_name = "washer"
        model.encode_batch([rgb])  # CNF at CLIP's own size and both branches at the input size
    finally:
        del model.backbone.encode_tokens
    expected = backbone.tokens(backbone.preprocess([rgb], 32))
    assert any(torch.allclose(tokens, expected) for tokens in seen)
