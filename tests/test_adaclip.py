"""AdaCLIP: hand cases of its rules, the official checkpoint layout, training and the CLI, on tiny random CLIPs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.data.datasets import load_dataset
from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.errors import WeightsError
from iapas.methods.adaclip.checkpoint import OFFICIAL_PREFIX, load_into, read_checkpoint
from iapas.methods.adaclip.hsf import cluster_centre, fuse
from iapas.methods.adaclip.model import AdaClip, AdaClipPrompts, AdaClipSettings, default_layers
from iapas.methods.adaclip.text import prompt_sentences
from iapas.methods.adaclip.train import AdaClipArchitecture, reference_dice, train_adaclip
from iapas.prompt_learning import TrainOptions, dice_loss, focal_loss, gaussian_smooth, mosaic, two_class_focal_loss
from iapas.weights.manifest import find_weights

FIXTURE = Path("/work/shared/fixtures/adaclip_vitl336_checkpoint_keys.json")
FIXTURE_KEYS = Path(__file__).parent / "fixtures" / "adaclip_vitl336_checkpoint_keys.json"


@pytest.fixture(scope="module")
def backbone(weights_dir):
    return ClipBackbone(find_weights("clip", weights_dir)[1])


@pytest.fixture(scope="module")
def vitl_like_clip(vitl_like_dir):
    return ClipBackbone(vitl_like_dir)


@pytest.fixture(scope="module")
def vitl_like_dir(tmp_path_factory):
    """A tiny CLIP directory with ViT-L-14-336's proportions: text width = projection dim, 4 layers each, patch 14."""
    from transformers import CLIPConfig, CLIPModel

    from iapas.weights.demo import build_demo_clip

    directory = build_demo_clip(tmp_path_factory.mktemp("clip") / "vitl-like")
    tokens = json.loads((directory / "vocab.json").read_text())
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=24, intermediate_size=32, num_hidden_layers=4,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokens["<|startoftext|>"],
                         eos_token_id=tokens["<|endoftext|>"], pad_token_id=tokens["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                           image_size=28, patch_size=14),
        projection_dim=24,
    )
    torch.manual_seed(1)
    CLIPModel(config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    spec = SynthSpec(categories=("washer", "tile"), defects=("hole", "stain"), train_good=1, test_good=2, per_defect=3, size=64)
    return write_synth_dataset(tmp_path_factory.mktemp("aux"), spec)


@pytest.fixture(scope="module")
def medical_root(tmp_path_factory):
    """A CVC-ColonDB-like set: images/ and masks/ paired by stem, one mask empty (a normal image)."""
    root = tmp_path_factory.mktemp("med") / "ColonDB"
    rng = np.random.default_rng(5)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(root / "images" / f"{index}.png")
        mask = np.zeros((48, 40), np.uint8)
        if index:
            mask[10:20, 5:15] = 255
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")
    return root


def image(seed=0, shape=(70, 90, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def fixture_shapes() -> dict[str, list[int]]:
    return json.loads(FIXTURE_KEYS.read_text())


# ---- rules on hand cases -------------------------------------------------------------------------
def test_text_prompts_embed_the_class_name_in_states_and_templates():
    normal, abnormal = prompt_sentences("metal_nut")
    assert len(normal) == 7 * 4 and len(abnormal) == 5 * 4
    assert normal[0] == "a bad photo of a metal_nut." and normal[5] == "a low resolution photo of the flawless metal_nut."
    assert abnormal[-1] == "a cropped photo of the metal_nut with damage."
    assert prompt_sentences("pipe-fryum")[0][0] == "a bad photo of a pipe fryum."  # only '-' becomes a space


def test_losses_on_hand_cases():
    target = torch.tensor([[1.0, 0.0]])
    assert float(dice_loss(target, target)) == pytest.approx(0.0)
    assert float(dice_loss(torch.tensor([[0.0, 1.0]]), target)) == pytest.approx(1 - 1 / 3)
    assert float(focal_loss(torch.tensor([[0.9, 0.1]]), target)) == pytest.approx(-(0.1 ** 2) * np.log(0.9))
    # AdaCLIP's FocalLoss: one-hot clamped to [1e-5, 1 - 1e-5], p_t = <one-hot, p> + 1e-5
    probabilities = torch.tensor([[0.1, 0.9], [0.7, 0.3]])  # (B, 2): normal, anomalous
    labels = torch.tensor([1.0, 1.0])
    s = 1e-5
    p_t = np.array([(1 - s) * 0.9 + s * 0.1 + s, (1 - s) * 0.3 + s * 0.7 + s])
    expected = np.mean(-(1 - p_t) ** 2 * np.log(p_t))
    assert float(two_class_focal_loss(probabilities, labels)) == pytest.approx(expected, rel=1e-6)
    maps = torch.tensor([[[[0.2, 0.6]], [[0.8, 0.4]]]])  # (1, 2, 1, 2) map layout
    p_t = np.array([(1 - s) * 0.2 + s * 0.8 + s, (1 - s) * 0.4 + s * 0.6 + s])  # targets 0 then 1
    assert float(two_class_focal_loss(maps, torch.tensor([[[0.0, 1.0]]]))) == pytest.approx(np.mean(-(1 - p_t) ** 2 * np.log(p_t)), rel=1e-6)


def test_dice_is_per_row_at_batch_one_as_the_reference_computes_it():
    probability = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # (1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # row 0: 1 - (2 + 1) / (1 + 2 + 1) = 0.25; row 1: 1 - 1 / 1 = 0; mean 0.125
    assert float(reference_dice(probability, target)) == pytest.approx(0.125)
    # a batch of two: per image, 1 - (2 + 1) / (1 + 2 + 1) = 0.25 each
    assert float(reference_dice(probability.repeat(2, 1, 1), target.repeat(2, 1, 1))) == pytest.approx(0.25)


def test_gaussian_smoothing_sigma_4_on_an_impulse():
    impulse = np.zeros((41, 41), np.float32)
    impulse[20, 20] = 1.0
    smoothed = gaussian_smooth(impulse, 4)
    offsets = np.arange(-16, 17)  # scipy's default truncate 4.0 -> radius 16
    kernel = np.exp(-offsets ** 2 / (2 * 16.0))
    kernel /= kernel.sum()
    np.testing.assert_allclose(smoothed[20, 20], kernel[16] ** 2, rtol=1e-5)
    np.testing.assert_allclose(smoothed[20, 24], kernel[16] * kernel[20], rtol=1e-5)
    assert smoothed.sum() == pytest.approx(1.0, rel=1e-5)


def test_hsf_averages_every_cluster_centre_of_the_top_patches():
    # two layers with the same 2-D features: three clear groups of sizes 2, 1, 3
    points = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    anomaly = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    centre = cluster_centre([points, points], anomaly, clusters=3)
    # centres (1, 0), (0, 1), (-1, 0) weigh the same whatever their size: mean (0, 1/3), normalised (0, 1)
    torch.testing.assert_close(centre, torch.tensor([0.0, 1.0]))
    # one cluster: the 5 most anomalous patches only (the 0.4 one is left out), over both layers
    second = points + torch.tensor([0.0, 2.0])
    single = cluster_centre([points, second], anomaly, clusters=1)
    mean = (points[:5].mean(0) + second[:5].mean(0)) / 2
    torch.testing.assert_close(single, mean / mean.norm())
    cls = torch.tensor([1.0, 0.0])
    fused = 0.2 * torch.tensor([0.0, 1.0]) + 0.8 * cls
    torch.testing.assert_close(fuse(torch.tensor([0.0, 1.0]), cls), fused / fused.norm())


def test_test_map_averages_logits_upsamples_with_aligned_corners_then_softmax(backbone):
    model = AdaClip(backbone, AdaClipSettings((1, 2), 5, 2, image_size=3))
    logits = torch.zeros(1, 2, 2, 2, 2)  # (B, layers, classes, g, g)
    logits[0, 0, 1] = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    logits[0, 1, 1] = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    heat = model.anomaly_map(logits)[0]
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # softmax of (0, x)
    # corners keep the grid values (align_corners True); the centre is the mean of all four
    assert float(heat[0, 0]) == pytest.approx(sigmoid(1.0), rel=1e-6)
    assert float(heat[2, 2]) == pytest.approx(sigmoid(2.0), rel=1e-6)
    assert float(heat[0, 2]) == pytest.approx(0.5, rel=1e-6)
    assert float(heat[1, 1]) == pytest.approx(sigmoid(0.75), rel=1e-6)


def test_position_embeddings_follow_the_input_size(backbone):
    weight = backbone.clip.vision_model.embeddings.position_embedding.weight
    torch.testing.assert_close(backbone.position_embeddings(backbone.grid ** 2), weight)  # native size: unchanged
    big = backbone.preprocess([image()], 2 * backbone.image_size)
    tokens = backbone.tokens(big)
    assert tokens.shape[1] == 1 + (2 * backbone.grid) ** 2
    table = backbone.position_embeddings((2 * backbone.grid) ** 2)
    torch.testing.assert_close(table[0], weight[0])


def test_mosaic_tiles_four_images_in_reading_order():
    images = [np.full((2, 3, 3), value, np.uint8) for value in (10, 20, 30, 40)]
    masks = [np.full((2, 3), index == 3) for index in range(4)]
    masks[0] = np.zeros((2, 3), bool)
    canvas, mask = mosaic(images, masks)
    assert canvas.shape == (4, 6, 3) and mask.shape == (4, 6)
    assert canvas[0, 0, 0] == 10 and canvas[0, 3, 0] == 20 and canvas[2, 0, 0] == 30 and canvas[3, 5, 0] == 40
    assert mask[2:, 3:].all() and not mask[:2].any() and not mask[2:, :3].any()
    mixed = [images[0], np.full((3, 4, 3), 50, np.uint8), images[2], images[3]]  # a larger second image
    canvas, _ = mosaic(mixed, [np.zeros(im.shape[:2], bool) for im in mixed])
    assert canvas.shape == (4, 6, 3)  # the first image sets the tile size
    assert canvas[1, 5, 0] == 50 and canvas[2, 3, 0] == 40  # cut by the canvas, its overhang covered by the last tile


def test_medical_folder_layout(medical_root, tmp_path):
    dataset = load_dataset("medical", medical_root)
    samples = dataset.samples("ColonDB")
    assert [s.label for s in samples] == [0, 1, 1] and samples[1].mask_path.name == "1.png"
    converted = tmp_path / "CVC-ClinicDB" / "ClinicDB"  # AdaCLIP's converted layout, masks paired in sorted order
    (converted / "test" / "polyp").mkdir(parents=True)
    (converted / "ground_truth" / "polyp").mkdir(parents=True)
    Image.fromarray(image(1, (8, 8, 3))).save(converted / "test" / "polyp" / "a.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    Image.fromarray(mask).save(converted / "ground_truth" / "polyp" / "a_gt.png")
    clinic = load_dataset("medical", converted.parent)
    assert clinic.categories == ["ClinicDB"] and clinic.samples("ClinicDB")[0].label == 1


# ---- the official checkpoint layout --------------------------------------------------------------
def test_fixture_copy_matches_the_shared_key_list():
    if FIXTURE.is_file():
        assert json.loads(FIXTURE.read_text()) == fixture_shapes()


def test_official_vitl336_checkpoint_maps_key_by_key_at_full_size(tmp_path):
    shapes = fixture_shapes()
    assert len(shapes) == 38
    torch.manual_seed(0)
    payload = {key: torch.randn(shape) for key, shape in shapes.items()}
    path = tmp_path / "pretrained_all.pth"
    torch.save(payload, path)
    settings, state, origin = read_checkpoint(path, vision_depth=24)  # ViT-L-14-336 has 24 vision layers
    assert settings == AdaClipSettings((6, 12, 18, 24), 5, 4, 518) and origin == "official AdaCLIP"
    prompts = AdaClipPrompts(settings, text_width=768, vision_width=1024, embed_dim=768)
    assert {OFFICIAL_PREFIX + key: list(value.shape) for key, value in prompts.state_dict().items()} == shapes
    load_into(prompts, state, path, origin, "clip-vit-large-patch14-336")
    for key, value in prompts.state_dict().items():
        torch.testing.assert_close(value, payload[OFFICIAL_PREFIX + key])
    smaller = AdaClipPrompts(settings, text_width=512, vision_width=768, embed_dim=512)  # e.g. a ViT-B CLIP
    with pytest.raises(WeightsError, match=r"does not fit CLIP .*need ViT-L-14-336"):
        load_into(smaller, state, path, origin, "clip-vit-base-patch16")


def test_iapas_checkpoint_converts_to_exactly_the_official_vitl336_keys(tmp_path, capsys):
    """`iapas weights to-official adaclip`: every name and shape the official ViT-L-14-336 model saves, no other."""
    from dataclasses import asdict

    settings = AdaClipSettings((6, 12, 18, 24), 5, 4, 518)
    torch.manual_seed(0)
    prompts = AdaClipPrompts(settings, text_width=768, vision_width=1024, embed_dim=768)
    source = tmp_path / "adaclip_prompts.pt"
    torch.save({"format": 3, "settings": asdict(settings), "clip": "clip-vit-l-14-336", "prompts": prompts.state_dict()}, source)
    assert main(["weights", "to-official", "adaclip", str(source), "-o", str(tmp_path / "official.pth")]) == 0
    written = torch.load(tmp_path / "official.pth", weights_only=True)
    assert {key: list(value.shape) for key, value in written.items()} == fixture_shapes()
    for key, value in prompts.state_dict().items():
        torch.testing.assert_close(written[OFFICIAL_PREFIX + key], value)
    # layers the official code cannot build (it takes every quarter of the depth) are refused, in one line
    odd = AdaClipSettings((5, 12, 18, 24), 5, 4, 518)
    torch.save({"format": 3, "settings": asdict(odd), "clip": "x", "prompts": prompts.state_dict()}, tmp_path / "odd.pt")
    capsys.readouterr()
    assert main(["weights", "to-official", "adaclip", str(tmp_path / "odd.pt"), "-o", str(tmp_path / "odd.pth")]) == 2
    assert "feature layers [5, 12, 18, 24]" in capsys.readouterr().err and not (tmp_path / "odd.pth").exists()


def test_training_can_save_the_official_format(vitl_like_dir, train_root, tmp_path):
    from iapas.methods.adaclip.train import OFFICIAL_FILE

    options = TrainOptions("mvtec", train_root, tmp_path / "ckpt", vitl_like_dir, epochs=1, batch_size=2, learning_rate=1e-2,
                           limit=2, progress=False)
    notes = []
    path, _ = train_adaclip(options, AdaClipArchitecture(image_size=28, save_format="official"), note=notes.append)
    assert path == tmp_path / "ckpt" / OFFICIAL_FILE and "--image_size 28 --prompting_depth 4 --prompting_length 5" in notes[-1]
    ours = torch.load(tmp_path / "ckpt" / "adaclip_prompts.pt", weights_only=True)["prompts"]
    official = torch.load(path, weights_only=True)
    assert set(official) == {OFFICIAL_PREFIX + key for key in ours}
    assert all(torch.equal(official[OFFICIAL_PREFIX + key], value) for key, value in ours.items())
    reloaded = AdaClip.load(path, ClipBackbone(vitl_like_dir), image_size=28)  # iapas reads it back as an official file
    assert reloaded.settings == AdaClipSettings((1, 2, 3, 4), 5, 4, 28)


def scaled_official_checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """The fixture's keys with ViT-L widths scaled to the tiny CLIP (768 -> 24, 1024 -> 32), random values."""
    scale = {768: 24, 1024: 32, 5: 5}
    generator = torch.Generator().manual_seed(seed)
    payload = {key: 0.3 * torch.randn([scale[d] for d in shape], generator=generator) for key, shape in fixture_shapes().items()}
    torch.save(payload, path)
    return payload


def test_official_layout_loads_and_runs_on_a_tiny_clip(vitl_like_clip, tmp_path):
    path = tmp_path / "pretrained_mvtec_colondb.pth"
    payload = scaled_official_checkpoint(path)
    model = AdaClip.load(path, vitl_like_clip)
    assert model.settings == AdaClipSettings((1, 2, 3, 4), 5, 4, 518)
    for key, value in model.prompts.state_dict().items():
        torch.testing.assert_close(value, payload[OFFICIAL_PREFIX + key])
    model.prepare("candle", [], "object", tmp_path)
    result = model.segment(image(4, (50, 60, 3)))
    assert result.anomaly_map.shape == (50, 60) and 0 <= result.image_score <= 1
    assert 0 <= result.anomaly_map.min() <= result.anomaly_map.max() <= 1
    broken = dict(payload)
    broken[OFFICIAL_PREFIX + "cls_token_layer.head.0.bias"] = torch.zeros(7)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="cls_token_layer.head.0.bias"):
        AdaClip.load(tmp_path / "broken.pth", vitl_like_clip)
    del broken[OFFICIAL_PREFIX + "cls_token_layer.head.0.bias"]
    torch.save(broken, tmp_path / "short.pth")
    with pytest.raises(WeightsError, match="missing cls_token_layer.head.0.bias"):
        AdaClip.load(tmp_path / "short.pth", vitl_like_clip)


def test_save_load_round_trip_gives_identical_maps(backbone, tmp_path):
    torch.manual_seed(0)
    model = AdaClip(backbone, AdaClipSettings(default_layers(backbone.depth), 3, 2, image_size=48))
    model.prepare("washer", [], "object", tmp_path)
    before = model.segment(image(3))
    path = model.save(tmp_path / "prompts.pt")
    loaded = AdaClip.load(path, backbone)
    loaded.prepare("washer", [], "object", tmp_path)
    after = loaded.segment(image(3))
    np.testing.assert_array_equal(after.anomaly_map, before.anomaly_map)
    assert after.image_score == before.image_score and 0 <= after.image_score <= 1
    assert loaded.settings == model.settings and default_layers(24) == (6, 12, 18, 24)
    with pytest.raises(WeightsError, match="AdaCLIP prompt weights not found"):
        AdaClip.load(tmp_path / "none.pt", backbone)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not an AdaCLIP prompt checkpoint"):
        AdaClip.load(tmp_path / "bad.pt", backbone)
    with pytest.raises(WeightsError, match="do not exist"):
        AdaClip(backbone, AdaClipSettings((1, 7)))
    with pytest.raises(WeightsError, match="prompt depth 4 does not fit"):
        AdaClip(backbone, AdaClipSettings((1, 2), 5, 4))


def test_gradients_reach_every_learned_tensor_but_not_clip(backbone):
    torch.manual_seed(0)
    model = AdaClip(backbone, AdaClipSettings((1, 2), 5, 2, image_size=48))
    pixels = backbone.preprocess([image(1), image(2)], 48)
    loss = model.loss(pixels, torch.zeros(2, 48, 48), torch.tensor([0.0, 1.0]), ["washer", "tile"])
    loss.backward()
    unused = {"text_prompter.static_prompts.0"}  # the reference never inserts text prompts before layer 0
    for name, parameter in model.prompts.named_parameters():
        assert (parameter.grad is None) == (name in unused), name
        if name not in unused:
            assert parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in backbone.clip.parameters())


# ---- training and the CLI ------------------------------------------------------------------------
def test_training_lowers_the_loss_and_resumes_with_the_mosaic(weights_dir, train_root, tmp_path):
    clip = find_weights("clip", weights_dir)[1]
    small = AdaClipArchitecture(image_size=32)
    options = TrainOptions("mvtec", train_root, tmp_path / "full", clip, epochs=6, batch_size=4, learning_rate=1e-2,
                           limit=8, progress=False)
    _, losses = train_adaclip(options, small)
    assert len(losses) == 12 and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])
    cut = TrainOptions(**{**options.__dict__, "out_dir": tmp_path / "cut", "epochs": 2})
    train_adaclip(cut, small)
    resumed_path, resumed = train_adaclip(TrainOptions(**{**cut.__dict__, "epochs": 6}), small)
    assert resumed == pytest.approx(losses[4:], rel=1e-4)  # mosaic draws and order repeat on resume
    log = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert log["epoch"] == 6 and log["losses"] == pytest.approx(losses, rel=1e-4)


def test_cli_trains_on_two_auxiliary_sets_and_eval_uses_the_hsf_score(capsys, weights_dir, train_root, medical_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = ["--weights", str(weights_dir), "--no-progress"]
    assert main(["train", "adaclip", "--dataset", "mvtec", "--root", str(train_root), "--dataset", "medical", "--root",
                 str(medical_root), "-o", str(ckpt), "--epochs", "1", "--image-size", "32", *common]) == 0
    assert "AdaCLIP prompts: " in capsys.readouterr().err
    prompts = str(ckpt / "adaclip_prompts.pt")
    assert torch.load(prompts, weights_only=True)["trained_on"] == "mvtec+medical"
    picture = next((train_root / "washer" / "test" / "hole").glob("*.png"))
    assert main(["segment", str(picture), "--method", "adaclip", "--category", "washer", "-o", str(tmp_path / "seg"),
                 "--adaclip-prompts", prompts, *common]) == 0
    assert np.load(tmp_path / "seg" / f"{picture.name}.npy").shape == (64, 64)
    capsys.readouterr()
    for rule, expected in (([], "method"), (["--image-score", "max"], "max")):
        out = tmp_path / f"res-{expected}"
        assert main(["eval", "--dataset", "mvtec", "--root", str(train_root), "--categories", "washer", "--method", "adaclip",
                     "--adaclip-prompts", prompts, "-o", str(out), "--limit", "3", *rule, *common]) == 0
        assert json.loads((out / "adaclip" / "run.json").read_text())["image_score"] == expected
    assert "| **mean** |" in capsys.readouterr().out
    code = main(["train", "adaclip", "--dataset", "mvtec", "--root", str(train_root), "--dataset", "visa", "-o",
                 str(tmp_path / "x"), *common])
    assert code == 2 and "give one --root per --dataset" in capsys.readouterr().err


def test_cli_names_the_missing_adaclip_weights(capsys, train_root, tmp_path):
    picture = next((train_root / "washer" / "test" / "hole").glob("*.png"))
    empty = tmp_path / "weights"
    empty.mkdir()
    base = ["segment", str(picture), "--method", "adaclip", "-o", str(tmp_path / "out"), "--weights", str(empty)]
    assert main(base) == 2
    assert "no AdaCLIP weights in" in capsys.readouterr().err
    assert main([*base, "--adaclip-prompts", "adaclip-pretrained-visa-clinicdb"]) == 2
    error = capsys.readouterr().err
    assert "adaclip/pretrained_visa_clinicdb.pth" in error and "cubert-gmbh/adaclip" in error


# ---- keeping the best epoch on a validation set the user names -------------------------------------
def test_validation_f1_is_the_per_category_pixel_f1_max_averaged(backbone, train_root):
    """`validation_f1` against sklearn's exact curve on the same smoothed maps and masks (binned: within 1e-3)."""
    from sklearn.metrics import precision_recall_curve

    from iapas.methods.adaclip.train import AdaClipBatches, validation_f1
    from iapas.prompt_learning import training_samples

    torch.manual_seed(0)
    model = AdaClip(backbone, AdaClipSettings(default_layers(backbone.depth), 3, 2, image_size=32))
    every = training_samples("mvtec", train_root)
    samples = [s for s in every if s.category == "washer"][:4] + [s for s in every if s.category == "tile"][:3]
    expected = []
    for category in sorted({sample.category for sample in samples}):
        maps, masks = [], []
        for sample in (s for s in samples if s.category == category):
            picture, mask = AdaClipBatches._plain(sample)
            with torch.no_grad():
                heat = model.anomaly_map(model(model.pixels([picture]), [category]).layer_logits)[0]
            maps.append(gaussian_smooth(heat, 4.0))
            resized = torch.nn.functional.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(32, 32),
                                                      mode="bilinear", align_corners=False, antialias=True)[0, 0]
            masks.append(resized.numpy() > 0.5)
        precision, recall, _ = precision_recall_curve(np.ravel(masks), np.ravel(maps))
        f1 = 2 * precision * recall / (precision + recall)
        expected.append(np.max(f1[np.isfinite(f1)]))
    assert validation_f1(model, samples) == pytest.approx(float(np.mean(expected)), abs=1e-3)


def test_keep_best_ends_with_the_best_validation_epoch_and_resumes(weights_dir, train_root, tmp_path, monkeypatch):
    import iapas.methods.adaclip.train as adaclip_train

    scores = iter([0.2, 0.5, 0.3, 0.4])  # epochs 1-3, then epoch 4 after a resume
    monkeypatch.setattr(adaclip_train, "validation_f1", lambda model, samples: next(scores))
    clip = find_weights("clip", weights_dir)[1]
    architecture = AdaClipArchitecture(image_size=32, keep="best", val_dataset="mvtec", val_root=train_root)
    options = TrainOptions("mvtec", train_root, tmp_path / "ckpt", clip, epochs=3, batch_size=4, learning_rate=1e-2,
                           limit=4, progress=False)
    notes = []
    path, _ = train_adaclip(options, architecture, note=notes.append)
    best = torch.load(path, weights_only=True)
    assert path.name == adaclip_train.BEST_FILE and best["epochs_done"] == 2 and best["validation_f1"] == 0.5
    assert "epoch 3: validation pixel F1-max 0.3000 (best: epoch 2, 0.5000)" in notes
    last = torch.load(tmp_path / "ckpt" / "adaclip_prompts.pt", weights_only=True)
    assert any(not torch.equal(last["prompts"][k], best["prompts"][k]) for k in best["prompts"])  # epoch 3 differs
    resumed, _ = train_adaclip(TrainOptions(**{**options.__dict__, "epochs": 4}), architecture, note=notes.append)
    assert torch.load(resumed, weights_only=True)["epochs_done"] == 2  # 0.4 at epoch 4 does not beat epoch 2's 0.5


def test_keep_best_needs_a_validation_set(capsys, weights_dir, train_root, tmp_path):
    code = main(["train", "adaclip", "--dataset", "mvtec", "--root", str(train_root), "-o", str(tmp_path / "o"), "--keep", "best",
                 "--weights", str(weights_dir), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and "--keep best selects the epoch on a validation set" in error and "Traceback" not in error


def test_official_recipe_builds_adaclip_with_the_official_rules(vitl_like_dir, tmp_path):
    from iapas.config import build_config
    from iapas.errors import ValueRangeError
    from iapas.methods.adaclip import build

    path = tmp_path / "pretrained_all.pth"
    scaled_official_checkpoint(path)
    chosen = {"clip_methods.weights": str(vitl_like_dir), "clip_methods.adaclip_prompts": str(path)}
    official = build(build_config("official").updated(chosen), ())
    assert (official.settings.image_size, official.resize, official.prompt_precision) == (518, "pil", "fp16")
    default = build(build_config("iapas").updated({**chosen, "clip_methods.adaclip_image_size": 28}), ())
    assert (default.settings.image_size, default.resize, default.prompt_precision) == (28, "antialiased", "fp32")
    with pytest.raises(ValueRangeError, match="clip_methods.adaclip_resize must be one of antialiased, pil"):
        build_config("iapas").updated({"clip_methods.adaclip_resize": "cv2"})
    with pytest.raises(ValueRangeError, match="adaclip_image_size must be 0"):
        build_config("iapas").updated({"clip_methods.adaclip_image_size": -1})
    from iapas.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of the CLIP's patch size 14, got 30"):
        build(build_config("iapas").updated({**chosen, "clip_methods.adaclip_image_size": 30}), ())


def test_official_recipe_trains_with_the_official_rules(weights_dir, train_root, tmp_path, monkeypatch):
    """`iapas train adaclip --recipe official` hands the PIL resize and fp16 prompts to training (method/trainer.py)."""
    import iapas.methods.adaclip.train as adaclip_train

    seen = []
    monkeypatch.setattr(adaclip_train, "train_adaclip", lambda options, architecture, **extra: (seen.append(architecture),
                                                                                               (tmp_path / "p.pt", [1.0]))[1])
    common = ["train", "adaclip", "--dataset", "mvtec", "--root", str(train_root), "--weights", str(weights_dir), "--no-progress"]
    assert main([*common, "-o", str(tmp_path / "a"), "--recipe", "official"]) == 0
    assert main([*common, "-o", str(tmp_path / "b")]) == 0
    assert [(a.resize, a.prompt_precision) for a in seen] == [("pil", "fp16"), ("antialiased", "fp32")]
