"""AdaCLIP against its authors' code (github caoyunkang/AdaCLIP, ../shared/reference/AdaCLIP), on one tiny random CLIP.

The official `AdaCLIP` model is built from the reference source around a tiny CLIP made with the reference's
own `CLIP` class; its learned tensors are saved as the official trainer saves them (`clip_model.*`) and loaded
by iapas, whose CLIP is the same state dict converted through the loader users run. Both run on the same
image: the reference with its own preprocessing (trainer.py's PIL Resize, CenterCrop, ToTensor, Normalize),
iapas with the official recipe's rules. The reference source is changed only where it cannot run here
(`method/__init__.py` imports the trainer's plotting and data tools; `pkg_resources` is gone from recent
setuptools; four in-place normalisations that recent torch cannot differentiate are written out-of-place) and
where it is random: KMeans is unseeded there, seeded 111 in iapas (point 14 of issue 21).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_source import reference_copy

# the by-hand check this test replaces (scripts/check_adaclip_against_reference.py) found 2.4e-6 between the two float32 stacks:
# open_clip-style and transformers attention sum in different orders. 1e-5 leaves room for that and stays below
# what each official rule changes on this CLIP (fp32 prompts: 9e-5; the float resize: more), so the test can fail.
MAP_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-5  # the HSF score: the same clusters (KMeans seeded alike) on features equal to ~1e-6
SIZE = 518  # test.py --image_size: an official checkpoint runs at 518 (a 37 x 37 grid at patch 14)
CLASS_NAME = "candle"
PATCHES = {
    "method/adaclip.py": [
        ("from pkg_resources import packaging", "import packaging.version"),
        ('KMeans(n_clusters=self.k_clusters, n_init="auto")', 'KMeans(n_clusters=self.k_clusters, n_init="auto", random_state=111)'),
        # in-place normalisations made out-of-place: the same values, but recent torch refuses to differentiate them
        ("class_embeddings /= class_embeddings.norm(dim=-1, keepdim=True)",
         "class_embeddings = class_embeddings / class_embeddings.norm(dim=-1, keepdim=True)"),
        ("class_embedding /= class_embedding.norm()", "class_embedding = class_embedding / class_embedding.norm()"),
        ("proj_patch_tokens[layer] /= proj_patch_tokens[layer].norm(dim=-1, keepdim=True)",
         "proj_patch_tokens[layer] = proj_patch_tokens[layer] / proj_patch_tokens[layer].norm(dim=-1, keepdim=True)"),
        ("proj_cls_tokens /= proj_cls_tokens.norm(dim=-1, keepdim=True)",
         "proj_cls_tokens = proj_cls_tokens / proj_cls_tokens.norm(dim=-1, keepdim=True)"),
    ],
}
LEARNED = ("text_prompter", "visual_prompter", "patch_token_layer", "cls_token_layer",
           "dynamic_visual_prompt_generator", "dynamic_text_prompt_generator")


class Reference:
    """The reference's modules, imported from a patched copy, and what was built with them."""

    def __init__(self, folder: Path) -> None:
        import open_clip

        for name, replacements in PATCHES.items():
            text = (folder / name).read_text(encoding="utf-8")
            for old, new in replacements:
                if old not in text:
                    pytest.fail(f"the reference changed: {old!r} not found in {name}")
                text = text.replace(old, new)
            (folder / name).write_text(text, encoding="utf-8")
        (folder / "method" / "__init__.py").write_text("", encoding="utf-8")
        bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"  # the copy here is a git-lfs pointer
        (folder / "method" / bpe.name).write_bytes(bpe.read_bytes())
        sys.path.insert(0, str(folder))
        try:
            from method.adaclip import AdaCLIP
            from method.clip_model import CLIP, resize_pos_embed
            from method.custom_clip import image_transform
            from loss import BinaryDiceLoss, FocalLoss
        finally:
            sys.path.remove(str(folder))
            for module in [m for m in sys.modules if m in ("method", "loss") or m.startswith("method.")]:
                del sys.modules[module]  # nothing named `method` stays importable for other tests
        self.AdaCLIP, self.CLIP, self.resize_pos_embed, self.image_transform = AdaCLIP, CLIP, resize_pos_embed, image_transform
        self.FocalLoss, self.BinaryDiceLoss = FocalLoss, BinaryDiceLoss


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return Reference(reference_copy("AdaCLIP", tmp_path_factory.mktemp("reference")))


@pytest.fixture(scope="module")
def built(reference, tmp_path_factory):
    """The official AdaCLIP on a tiny random CLIP, its checkpoint as the trainer saves it, and iapas's CLIP of the same weights."""
    from iapas.backends.clip import ClipBackbone
    from iapas.backends.openclip_convert import convert_openclip_checkpoint

    work = tmp_path_factory.mktemp("adaclip")
    torch.manual_seed(0)
    config = dict(embed_dim=64, vision_cfg=dict(image_size=28, layers=4, width=64, patch_size=14),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=4))
    small = reference.CLIP(**config).eval()
    with torch.no_grad():  # norms and biases away from their initial 1 / 0, so that they matter
        for parameter in small.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    torch.save(small.state_dict(), work / "clip.pt")
    backbone = ClipBackbone(convert_openclip_checkpoint(work / "clip.pt", work / "clip_hf"))
    state = small.state_dict()
    at_size = reference.CLIP(**{**config, "vision_cfg": {**config["vision_cfg"], "image_size": SIZE}}).eval()
    reference.resize_pos_embed(state, at_size)  # what the official create_model does for 518 px
    at_size.load_state_dict(state)
    model = reference.AdaCLIP(freeze_clip=at_size, text_channel=64, visual_channel=64, prompting_length=5, prompting_depth=4,
                              prompting_branch="VL", prompting_type="SD", use_hsf=True, k_clusters=20,
                              output_layers=[1, 2, 3, 4], device="cpu", image_size=SIZE).eval()
    with torch.no_grad():  # learned tensors away from their initial values, so that every one of them matters
        for name, parameter in model.named_parameters():
            if name.split(".")[0] in LEARNED:
                parameter.add_(0.05 * torch.randn_like(parameter))
    checkpoint = {f"clip_model.{k}": v for k, v in model.state_dict().items() if k.split(".")[0] in LEARNED}
    torch.save(checkpoint, work / "pretrained_tiny.pth")  # method/trainer.py `save`
    return model, work / "pretrained_tiny.pth", backbone


def image(seed: int = 3, shape=(300, 380, 3)) -> np.ndarray:
    """A picture with both smooth structure and fine texture, so that the resize rule shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]]
    smooth = 127 + 100 * np.sin(x / 23.0)[..., None] * np.cos(y / 17.0)[..., None] * np.array([1.0, 0.6, -0.8])
    return np.clip(smooth + rng.normal(0, 30, shape), 0, 255).astype(np.uint8)


def reference_output(reference, model, picture: np.ndarray) -> tuple[np.ndarray, float]:
    """The official map (before smoothing) and HSF score: trainer.py's preprocessing, then AdaCLIP.forward(aggregation=True)."""
    from PIL import Image
    from torchvision import transforms

    preprocess = reference.image_transform(SIZE, is_train=False)
    # method/trainer.py replaces the first two steps so that the whole image is resized to a square
    preprocess.transforms[0] = transforms.Resize(size=(SIZE, SIZE), interpolation=transforms.InterpolationMode.BICUBIC, max_size=None)
    preprocess.transforms[1] = transforms.CenterCrop(size=(SIZE, SIZE))
    pixels = preprocess(Image.fromarray(picture))[None]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        anomaly_map, score = model(pixels, [CLASS_NAME], aggregation=True)
    return anomaly_map[0].numpy(), float(score[0])


def iapas_output(path: Path, backbone, picture: np.ndarray, **rules) -> tuple[np.ndarray, float]:
    """iapas's map before smoothing (at the input size) and HSF score, through `encode_batch` as `segment` runs it."""
    from iapas.methods.adaclip.model import AdaClip

    model = AdaClip.load(path, backbone, **rules)
    model.prepare(CLASS_NAME, [], "object", Path("."))
    [(heat, probabilities)], _ = model.encode_batch([picture])
    return heat.numpy(), float(probabilities[1])


def test_official_recipe_equals_the_authors_adaclip(reference, built):
    from iapas.config import build_config

    model, path, backbone = built
    picture = image()
    expected_map, expected_score = reference_output(reference, model, picture)
    rules = build_config("official").clip_methods
    assert (rules.adaclip_image_size, rules.adaclip_resize, rules.adaclip_prompt_precision) == (SIZE, "pil", "fp16")
    heat, score = iapas_output(path, backbone, picture, image_size=rules.adaclip_image_size, resize=rules.adaclip_resize,
                               prompt_precision=rules.adaclip_prompt_precision)
    assert heat.shape == expected_map.shape == (SIZE, SIZE)
    np.testing.assert_allclose(heat, expected_map, atol=MAP_TOLERANCE, rtol=0)
    assert score == pytest.approx(expected_score, abs=SCORE_TOLERANCE)
    # each official rule matters here: without it the maps part by several times the tolerance
    for rule in ({"resize": "antialiased"}, {"prompt_precision": "fp32"}):
        official = {"resize": "pil", "prompt_precision": "fp16"}
        other, _ = iapas_output(path, backbone, picture, image_size=SIZE, **{**official, **rule})
        difference = float(np.abs(other - expected_map).max())
        print(f"without {rule}: map max |difference| {difference:.2e}")
        assert difference > 3 * MAP_TOLERANCE, rule
    print(f"official recipe: map max |difference| {np.abs(heat - expected_map).max():.2e}, score {abs(score - expected_score):.2e}")


def test_default_recipe_keeps_fp32_prompts_and_the_antialiased_resize(built):
    from iapas.config import Config

    rules = Config().clip_methods
    assert (rules.adaclip_image_size, rules.adaclip_resize, rules.adaclip_prompt_precision) == (0, "antialiased", "fp32")


def test_an_iapas_checkpoint_converted_to_official_loads_into_the_authors_model(reference, built, tmp_path):
    """`iapas weights to-official adaclip`: the official trainer's strict=False load finds every learned tensor and uses it.

    method/trainer.py `load` is `self.load_state_dict(torch.load(path), strict=False)` on the trainer that holds the
    model as `clip_model`; a misnamed key would load as nothing without a word, so the test checks the names and
    shapes against the official model itself and then that its maps become iapas's.
    """
    import copy

    from iapas.cli import main
    from iapas.methods.adaclip.model import AdaClip

    model, path, backbone = built
    ours = AdaClip.load(path, backbone, image_size=SIZE)
    torch.manual_seed(7)
    with torch.no_grad():  # iapas-side values that differ from the official model's current ones
        for parameter in ours.prompts.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    ours.save(tmp_path / "adaclip_prompts.pt")
    assert main(["weights", "to-official", "adaclip", str(tmp_path / "adaclip_prompts.pt"), "-o", str(tmp_path / "official.pth")]) == 0

    trainer = torch.nn.Module()  # what AdaCLIP_Trainer is to load_state_dict: a module holding `clip_model`
    trainer.clip_model = copy.deepcopy(model)
    checkpoint = torch.load(tmp_path / "official.pth", weights_only=True)
    expected = {name: tuple(value.shape) for name, value in trainer.state_dict().items()
                if any(part in name for part in LEARNED)}  # method/trainer.py `save`: the learnable_paramter_list names
    assert {name: tuple(value.shape) for name, value in checkpoint.items()} == expected
    missing, unexpected = trainer.load_state_dict(checkpoint, strict=False)
    assert not unexpected and not set(missing) & set(expected)
    picture = image(5)
    reference_map, reference_score = reference_output(reference, trainer.clip_model, picture)
    heat, score = iapas_output(tmp_path / "adaclip_prompts.pt", backbone, picture, image_size=SIZE, resize="pil",
                               prompt_precision="fp16")
    np.testing.assert_allclose(heat, reference_map, atol=MAP_TOLERANCE, rtol=0)
    assert score == pytest.approx(reference_score, abs=SCORE_TOLERANCE)
    before, _ = reference_output(reference, model, picture)
    assert np.abs(before - reference_map).max() > 100 * MAP_TOLERANCE  # the loaded values changed the official maps


def test_training_loss_and_gradients_equal_the_authors(reference, built):
    """method/trainer.py `train_one_batch` (batch 1, as train.py runs) against iapas's `adaclip_loss`, official rules."""
    import copy

    from iapas.methods.adaclip.model import AdaClip
    from iapas.methods.adaclip.train import adaclip_loss

    model, path, backbone = built
    theirs = copy.deepcopy(model)
    ours = AdaClip.load(path, backbone, image_size=SIZE, resize="pil", prompt_precision="fp16")
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, SIZE, SIZE)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 100:200, 150:300] = 1
    label = torch.tensor([1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps, score = theirs(pixels, [CLASS_NAME], aggregation=False)
    focal, dice, gt = reference.FocalLoss(), reference.BinaryDiceLoss(), mask.squeeze()
    expected = focal(score, label.unsqueeze(1)) + sum(focal(m, gt) + dice(m[:, 1], gt) + dice(m[:, 0], 1 - gt) for m in maps)
    loss = adaclip_loss(ours, pixels, mask[:, 0], label, [CLASS_NAME])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    expected.backward()
    loss.backward()
    their_parameters = dict(theirs.named_parameters())
    for name, parameter in ours.prompts.named_parameters():
        other = their_parameters[name].grad
        assert (parameter.grad is None) == (other is None), name
        if other is not None:  # relative to the largest gradient of the tensor: float32 sums in other orders
            assert float((parameter.grad - other).abs().max() / other.abs().max()) < 1e-3, name
