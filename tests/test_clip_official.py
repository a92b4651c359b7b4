"""AnomalyCLIP and FAPrompt under the official recipe against their authors' code, on one tiny random CLIP.

The authors' source (zqhang/AnomalyCLIP, mala-lab/FAPrompt; MIT) sits in ../shared/reference and is used here
only: the test builds their model from it (their CLIP classes, their loader, their prompt learner), gives
iapas the same weights through iapas's own loaders (the OpenAI-layout file converted by `ClipBackbone`, the
prompts as an official-layout checkpoint that their prompt learner loads strictly), runs both on the same
image and compares maps and image scores. The lines between their model calls follow their test.py.

Three of their imports play no part in these runs and are absent from our environment, so stand-ins are
put in sys.modules while their code is imported: `thop` (imported, never used), `pkg_resources.packaging`
(a torch version check; the `packaging` package itself) and FAPrompt's `iopath` path manager (opens a file).
"""
from __future__ import annotations

import builtins
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from iapas.backends.clip import ClipBackbone
from iapas.config import build_config
from iapas.methods.anomalyclip.model import AnomalyClip, AnomalyClipSettings
from iapas.methods.faprompt.model import FAPrompt, FAPromptSettings
from iapas.prompt_learning.rules import PromptRules
from reference_source import reference_copy

OFFICIAL = PromptRules.from_config(build_config("official").clip_methods)
INPUT = 518  # the official --image_size
VISION_LAYERS, TEXT_LAYERS = 4, 4
# Both sides run in float32 but sum in other orders (nn.MultiheadAttention against transformers' attention)
# through four layers, and the softmax at temperature 0.07 multiplies logit differences by 14. Measured
# (2026-12-02, CPU): maps within 7.2e-7 (AnomalyCLIP) and 3.0e-7 (FAPrompt), image scores within 1.2e-7.
# The tolerances sit between that and the smallest departure a rule makes on this CLIP: fp32 instead of fp16
# deep prompts moves the maps by 2.6e-5 and 8.1e-5 and the scores by 8.4e-6 and 4.0e-5; the float resize,
# GELU and the paper's top-10 patches move them by 1e-3 to 1e-1.
MAP_TOLERANCE = 5e-6
SCORE_TOLERANCE = 2e-6


def _stand_ins() -> dict[str, types.ModuleType]:
    import packaging.version

    thop = types.ModuleType("thop")
    thop.profile = None
    pkg_resources = types.ModuleType("pkg_resources")
    pkg_resources.packaging = packaging
    file_io = types.ModuleType("iopath.common.file_io")
    file_io.PathManagerFactory = types.SimpleNamespace(get=lambda key=None: types.SimpleNamespace(open=builtins.open))
    return {"thop": thop, "pkg_resources": pkg_resources, "iopath": types.ModuleType("iopath"),
            "iopath.common": types.ModuleType("iopath.common"), "iopath.common.file_io": file_io}


@contextmanager
def reference_imports(folder: Path):
    """Import from one copy of the authors' repository; every module it brought is forgotten afterwards."""
    before = set(sys.modules)
    stand_ins = _stand_ins()
    sys.modules.update(stand_ins)
    sys.path.insert(0, str(folder))
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = writes_bytecode
        sys.path.remove(str(folder))
        for name in set(sys.modules) - before:
            del sys.modules[name]


def tiny_openai_file(folder: Path, directory: Path) -> Path:
    """A tiny CLIP built with the reference's own CLIP class, saved as OpenAI's state dict (with its integers)."""
    with reference_imports(folder):
        from AnomalyCLIP_lib.CLIP import CLIP

        torch.manual_seed(0)
        # ViT-L/14-336's patch and grid (so 518 px gives its 37 x 37), narrow and shallow; 64-wide heads as OpenAI's;
        # FAPrompt's prior network needs the projection as wide as the text tower
        model = CLIP(64, 336, VISION_LAYERS, 128, 14, 77, 49408, 64, 1, TEXT_LAYERS)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))  # no unit norms and zero biases hiding a mix-up
    state = dict(model.state_dict())
    state.update(input_resolution=torch.tensor(336), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = directory / "ViT-tiny-openai.pt"
    torch.save(state, path)
    return path


def reference_model(clip: Path, params: dict) -> torch.nn.Module:
    """The reference's CLIP with learnable text layers, built by its build_model from the OpenAI-layout file.

    Their `AnomalyCLIP_lib.load` reads a path by trying TorchScript first and then `torch.load` on the same,
    already consumed file handle (which fails on a state dict here); what follows is build_model and, on the CPU,
    `.float()`, called here directly.
    """
    from AnomalyCLIP_lib.build_model import build_model

    return build_model("ViT-L/14@336px", torch.load(clip, map_location="cpu", weights_only=True), params).float().eval()


def textured_picture(seed: int = 0) -> np.ndarray:
    """A smooth 300 x 400 picture with some texture: resizing it to 518 px is not trivial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:400]
    base = np.stack([128 + 100 * np.sin(x / 23.0 + c) * np.cos(y / 17.0 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def reference_pixels(folder: Path, picture: np.ndarray) -> torch.Tensor:
    """The picture as the reference's test.py feeds it: its utils.get_transform on the PIL image."""
    with reference_imports(folder):
        from utils import get_transform

        preprocess, _ = get_transform(types.SimpleNamespace(image_size=INPUT))
        return preprocess(Image.fromarray(picture))[None]


def randomise(prompts: torch.nn.Module, seed: int) -> None:
    """Learned tensors far from their 0.02 initialisation, so that the prompts matter to the maps."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in prompts.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def as_image_size(heat: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """The reference's 518 px map brought to the image as iapas does it (bilinear, clamped)."""
    return F.interpolate(heat[None, None].float(), size=shape, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Writable copies of both repositories, the tiny CLIP file, and iapas's CLIP converted from it."""
    directory = tmp_path_factory.mktemp("reference")
    anomalyclip = reference_copy("AnomalyCLIP", directory)
    faprompt = reference_copy("FAPrompt", directory)
    clip = tiny_openai_file(anomalyclip, directory)
    backbone = ClipBackbone(clip)  # iapas's own path for `--clip FILE.pt`: converted once, QuickGELU detected
    return types.SimpleNamespace(anomalyclip=anomalyclip, faprompt=faprompt, clip=clip, backbone=backbone)


def test_the_official_recipe_sets_every_rule():
    assert OFFICIAL == PromptRules("two-class", "fp16", "pil-uint8", "bilinear", "fp32", "first")
    assert PromptRules.from_config(build_config("iapas").clip_methods) == PromptRules()


def test_anomalyclip_equals_the_authors_code(shared, tmp_path):
    backbone = shared.backbone
    assert backbone.clip.config.vision_config.hidden_act == "quick_gelu"
    # the released scripts' choices: the last layer's map only (train.sh/test.sh --features_list 24)
    settings = AnomalyClipSettings.for_backbone(backbone, layers=(VISION_LAYERS,))
    assert settings.image_size == INPUT
    ours = AnomalyClip(backbone, settings, OFFICIAL)
    randomise(ours.prompts, 1)
    checkpoint = ours.save(tmp_path / "epoch_15.pth", layout="official")
    picture = textured_picture()
    params = {"Prompt_length": settings.prompt_length, "learnabel_text_embedding_depth": settings.text_depth,
              "learnabel_text_embedding_length": settings.text_length}
    dpam = VISION_LAYERS - settings.vv_from + 2  # DAPM_replace(DPAM_layer=20) on 24 layers: V-V from layer 6
    pixels = reference_pixels(shared.anomalyclip, picture)
    with reference_imports(shared.anomalyclip):
        import AnomalyCLIP_lib
        from prompt_ensemble import AnomalyCLIP_PromptLearner

        model = reference_model(shared.clip, params)
        learner = AnomalyCLIP_PromptLearner(model.to("cpu"), params)
        built = {name: tensor.clone() for name, tensor in learner.state_dict().items()}
        saved = torch.load(checkpoint, weights_only=True)["prompt_learner"]
        learner.load_state_dict(saved)  # strict, as test.py loads a checkpoint
        model.visual.DAPM_replace(DPAM_layer=dpam)
        with torch.no_grad():  # test.py, from here to the smoothed map
            prompts, tokenized, compound = learner(cls_id=None)
            text = model.encode_text_learn(prompts, tokenized, compound).float()
            text = torch.stack(torch.chunk(text, dim=0, chunks=2), dim=1)
            text = text / text.norm(dim=-1, keepdim=True)
            image_features, patch_features = model.encode_image(pixels, [VISION_LAYERS], DPAM_layer=dpam)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            score = ((image_features @ text.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
            maps = []
            for patch in patch_features:
                patch = patch / patch.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch, text[0])
                similarity = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], INPUT)
                maps.append((similarity[..., 1] + 1 - similarity[..., 0]) / 2.0)
            heat = torch.stack(maps).sum(dim=0)
            heat = torch.from_numpy(gaussian_filter(heat[0].numpy(), sigma=settings.sigma))
    # the frozen buffers iapas writes are those their prompt learner computes itself from the same CLIP
    for name in ("tokenized_prompts_pos", "tokenized_prompts_neg", "token_prefix_pos", "token_suffix_neg"):
        torch.testing.assert_close(saved[name].to(built[name].dtype), built[name], rtol=0, atol=0)
    result = AnomalyClip.load(checkpoint, backbone, OFFICIAL).segment(picture)
    np.testing.assert_allclose(result.anomaly_map, as_image_size(heat, picture.shape[:2]), atol=MAP_TOLERANCE, rtol=0)
    assert result.image_score == pytest.approx(float(score), abs=SCORE_TOLERANCE)
    # the same prompts without iapas's record are a released file: iapas maps the last layer, as the scripts did
    torch.save({"prompt_learner": saved}, tmp_path / "released.pth")
    released = AnomalyClip.load(tmp_path / "released.pth", backbone, OFFICIAL)
    assert released.settings.layers == (VISION_LAYERS,)
    np.testing.assert_allclose(released.segment(picture).anomaly_map, result.anomaly_map, atol=1e-6, rtol=0)
    # the default recipe's rules (float resize, fp32 deep prompts) are measurably another map
    default = AnomalyClip.load(checkpoint, backbone).segment(picture)
    assert np.abs(default.anomaly_map - result.anomaly_map).max() > 10 * MAP_TOLERANCE


def test_faprompt_equals_the_authors_code(shared, tmp_path):
    backbone = shared.backbone
    settings = FAPromptSettings.for_backbone(backbone)
    assert settings.image_size == INPUT and settings.text_depth == TEXT_LAYERS
    ours = FAPrompt(backbone, settings, OFFICIAL)
    randomise(ours.prompts, 2)
    checkpoint = ours.save(tmp_path / "epoch_7.pth", layout="official")
    picture = textured_picture(1)
    params = {"Prompt_length": 12, "learnabel_text_embedding_depth": settings.text_depth,
              "learnabel_text_embedding_length": settings.text_length}  # test.py's defaults, depth scaled to the CLIP
    dpam = VISION_LAYERS - settings.vv_from + 2
    pixels = reference_pixels(shared.faprompt, picture)
    with reference_imports(shared.faprompt):
        import AnomalyCLIP_lib
        from FAPrompt import FAPrompt as ReferencePrompts

        model = reference_model(shared.clip, params)
        learner = ReferencePrompts(model.to("cpu"), params)
        # FAPrompt.py writes ViT-L's width (768) into the prior network; the same layout at the tiny CLIP's width
        width, k = learner.vis_dim, learner.k
        learner.patch_meta_net = torch.nn.Sequential(OrderedDict([
            ("linear1", torch.nn.Linear(width * k, width * k // 16)), ("relu", torch.nn.ReLU(inplace=True)),
            ("linear2", torch.nn.Linear(width * k // 16, width))]))
        built = {name: tensor.clone() for name, tensor in learner.state_dict().items()}
        saved = torch.load(checkpoint, weights_only=True)["prompt_learner"]
        learner.load_state_dict(saved)  # strict, as test.py loads a checkpoint
        model.visual.DAPM_replace(DPAM_layer=dpam)
        with torch.no_grad():  # test.py, from here to the smoothed map and the image score
            image_features, patch_features = model.encode_image(pixels, [6, 12, 18, 24], DPAM_layer=dpam)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            prompts_pos, prompts_neg, tokenized_pos, tokenized_neg, compound, _ = learner.forward()
            positive = model.encode_text_learn(prompts_pos, tokenized_pos, compound).float()
            negative = model.encode_text_learn(prompts_neg, tokenized_neg, compound).float().mean(dim=0, keepdim=True)
            text = torch.stack(torch.chunk(torch.cat([positive, negative]), dim=0, chunks=2), dim=1)
            text = text / text.norm(dim=-1, keepdim=True)
            patch_features = patch_features / patch_features.norm(dim=-1, keepdim=True)
            similarity, _ = AnomalyCLIP_lib.compute_similarity_ori(patch_features, text[0])
            first_map = AnomalyCLIP_lib.get_similarity_map(similarity[1:, :], INPUT).squeeze(0)
            first_max = similarity[1:, :, 1].max(dim=0).values
            _, top = torch.topk(similarity[1:, :, 1], k=10, dim=0, largest=True, sorted=True)
            top = top.permute(1, 0)
            selected = torch.stack([torch.stack([patch_features[1:, :, :].permute(1, 0, 2)[i, j, :]
                                                 for j in range(len(top[0]))]) for i in range(len(top))])
            texts = []
            for tokens in selected:
                prompts_pos, prompts_neg, tokenized_pos, tokenized_neg, compound, _ = learner.forward(selected_tokens=tokens)
                positive = model.encode_text_learn(prompts_pos, tokenized_pos, compound).float()
                negative = model.encode_text_learn(prompts_neg, tokenized_neg, compound).float().mean(dim=0, keepdim=True)
                texts.append(torch.cat([positive, negative]))
            text = torch.stack(texts)
            text = text / text.norm(dim=-1, keepdim=True)
            text_probs = ((image_features @ text.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
            similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_features, text)
            second_max = similarity[1:, :, 1].max(dim=0).values
            second_map = AnomalyCLIP_lib.get_similarity_map(similarity[1:, :], INPUT).squeeze(0)
            heat = (first_map[1] + 1 - first_map[0] + second_map[1] + 1 - second_map[0]) / 4.0
            score = 0.5 * (text_probs + (2 * first_max + second_max) / 3)
            heat = torch.from_numpy(gaussian_filter(heat[None, None].numpy(), sigma=settings.sigma))[0, 0]
    for name in ("tokenized_prompts_pos", "tokenized_prompts_neg", "token_prefix_neg", "token_suffix_neg"):
        torch.testing.assert_close(saved[name].to(built[name].dtype), built[name], rtol=0, atol=0)
    model = FAPrompt.load(checkpoint, backbone, OFFICIAL)
    result = model.segment(picture)
    np.testing.assert_allclose(result.anomaly_map, as_image_size(heat, picture.shape[:2]), atol=MAP_TOLERANCE, rtol=0)
    assert result.image_score == pytest.approx(float(score), abs=SCORE_TOLERANCE)
    # the paper's top-10 patches (the default recipe) give another prior, hence another map
    paper = FAPrompt(backbone, settings, PromptRules(**{**OFFICIAL.__dict__, "prior_patches": "top"}))
    paper.prompts.load_state_dict(model.prompts.state_dict())
    assert np.abs(paper.eval().segment(picture).anomaly_map - result.anomaly_map).max() > 10 * MAP_TOLERANCE


def test_two_class_focal_and_dice_equal_the_authors_loss(tmp_path):
    """The official recipe's segmentation loss is AnomalyCLIP's loss.py FocalLoss + two BinaryDiceLoss terms."""
    from iapas.methods.anomalyclip.train import segmentation_loss

    folder = reference_copy("AnomalyCLIP", tmp_path)
    generator = torch.Generator().manual_seed(0)
    abnormal = torch.rand(2, 1, 6, 6, generator=generator)
    abnormal[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 1e-7])  # saturated pixels: where the label smoothing shows
    maps = torch.cat([1 - abnormal, abnormal], dim=1)  # (B, 2, H, W) softmax pairs, as get_similarity_map gives them
    masks = (torch.rand(2, 6, 6, generator=generator) > 0.6).float()
    with reference_imports(folder):
        from loss import BinaryDiceLoss, FocalLoss

        focal, dice = FocalLoss(), BinaryDiceLoss()
        expected = focal(maps, masks) + dice(maps[:, 1], masks) + dice(maps[:, 0], 1 - masks)  # train.py's three terms
    torch.testing.assert_close(segmentation_loss(maps, masks, OFFICIAL.focal), expected, rtol=1e-6, atol=1e-7)
    assert abs(float(segmentation_loss(maps, masks)) - float(expected)) > 1e-3  # the default's binary focal differs there
