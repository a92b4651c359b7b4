"""WinCLIP: both reimplementations' rules on hand cases, and the anomalib variant against anomalib itself.

anomalib's WinClipModel and ours run on the same tiny random open_clip weights (open_clip's own classes,
saved as an open_clip state dict and converted through the loader users run).
"""
from __future__ import annotations

import importlib
import json
import math
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.errors import ConfigError, IapasError
from iapas.methods.winclip import WinClip
from iapas.methods.winclip.prompts import ANOMALIB_PROMPTS, CAOYUNKANG_PROMPTS, PromptEnsemble
from iapas.methods.winclip.variants import CaoyunkangRules, Gallery, text_embeddings
from iapas.methods.winclip.windows import WindowFeatures, harmonic, sliding_windows
from iapas.weights.manifest import find_weights

SIZE = 40  # tiny open_clip: 40 px, 8 px patches, a 5 x 5 grid


def rgb(seed: int, shape=(SIZE, SIZE, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# anomalib 2.7.0 declares open-clip-torch>=2.23,<2.26.1: from 2.26.1 open_clip's transformer is batch-first and
# anomalib's window pass (torch_model.py _get_window_embeddings permutes to LND first) then mixes the windows
# (anomalib issue #2571). The Makefile installs 2.24.0 into this folder for the reference side only.
OPEN_CLIP_FOR_ANOMALIB = Path(sys.prefix) / "open-clip-2.24"


@contextmanager
def reference_modules(folder: Path):
    """Import open_clip from `folder` (and anomalib's files) for the block; put every module back afterwards."""
    if not (folder / "open_clip").is_dir():
        pytest.fail(f"{folder} lacks open_clip 2.24 for anomalib (see the Makefile's install recipe)")
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "open_clip"}
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in set(sys.modules) - before:
            if name.split(".")[0] == "open_clip" or name.startswith("anomalib."):
                del sys.modules[name]
        sys.modules.update(ours)


def import_anomalib_winclip():
    """anomalib's torch_model module, imported without anomalib.models/__init__ and anomalib.data/__init__.

    Those two import every anomalib model and data module (about 6000 modules, 8 s here); WinClipModel needs
    only InferenceBatch and two buffer mixins. Stand-in packages pointing at the real folders let the real
    files load (the caller removes every anomalib module imported here afterwards).
    """
    import anomalib

    root = Path(anomalib.__file__).parent
    for package in ("data", "data.dataclasses", "data.dataclasses.torch", "models", "models.components",
                    "models.components.base", "models.image", "models.image.winclip"):
        name = f"anomalib.{package}"
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__path__ = [str(root / package.replace(".", "/"))]
    sys.modules["anomalib.data"].InferenceBatch = importlib.import_module("anomalib.data.dataclasses.torch.base").InferenceBatch
    components = sys.modules["anomalib.models.components"]
    components.BufferListMixin = importlib.import_module("anomalib.models.components.base.buffer_list").BufferListMixin
    components.DynamicBufferMixin = importlib.import_module("anomalib.models.components.base.dynamic_buffer").DynamicBufferMixin
    return (importlib.import_module("anomalib.models.image.winclip.torch_model"),
            importlib.import_module("anomalib.models.image.winclip.prompting"))


@dataclass(frozen=True)
class ReferenceSide:
    torch_model: types.ModuleType
    prompting: types.ModuleType
    open_clip: types.ModuleType
    model: torch.nn.Module  # the tiny open_clip CLIP
    checkpoint: Path  # its state dict, as open_clip saves it


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """anomalib's WinCLIP code and a tiny random CLIP built with open_clip's classes, saved as an open_clip state dict."""
    with reference_modules(OPEN_CLIP_FOR_ANOMALIB):
        torch_model, prompting = import_anomalib_winclip()
        reference_open_clip = torch_model.open_clip
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        torch.manual_seed(0)
        model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=SIZE),
                     text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)).eval()
        reference_open_clip.tokenize(["warm up"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("openclip") / "ViT-tiny.pt"
    torch.save(model.state_dict(), path)
    return ReferenceSide(torch_model, prompting, reference_open_clip, model, path)


@pytest.fixture(scope="module")
def backbone(reference):
    return ClipBackbone(reference.checkpoint)  # converted to transformers on first use, as ViT-B-16-plus-240.pt is


@pytest.fixture
def reference_model(reference, monkeypatch):
    """anomalib's WinClipModel whose open_clip loader returns the tiny model instead of downloading ViT-B-16-plus-240."""
    def create(name, pretrained=None, **kwargs):
        assert (name, pretrained) == ("ViT-B-16-plus-240", "laion400m_e31")  # what anomalib asks for
        return reference.model, None, None

    monkeypatch.setattr(reference.open_clip, "create_model_and_transforms", create)
    return lambda **kwargs: reference.torch_model.WinClipModel(**kwargs).eval()


# ---- rules on hand cases -------------------------------------------------------------------------------


def test_windows_are_the_references_windows():
    windows = sliding_windows(5, 2)
    assert windows.shape == (16, 4) and windows[0].tolist() == [0, 1, 5, 6] and windows[1].tolist() == [1, 2, 6, 7]
    coverage = np.bincount(windows.ravel(), minlength=25).reshape(5, 5)
    assert coverage[0, 0] == 1 and coverage[0, 2] == 2 and coverage[2, 2] == 4
    assert sliding_windows(4, 4).tolist() == [list(range(16))]


def test_harmonic_aggregation_hand_case():
    # patch 0: 0.5; patch 1: 2 / (1/0.5 + 1/0.25) = 1/3; patch 2: 0.25; patch 3: no window covers it -> 0
    torch.testing.assert_close(harmonic(torch.tensor([0.5, 0.25]), np.array([[0, 1], [1, 2]]), 4),
                               torch.tensor([0.5, 1 / 3, 0.25, 0.0]))
    # a window scoring 0 makes its patches 0 (anomalib: 1/0 = inf in the sum)
    torch.testing.assert_close(harmonic(torch.tensor([0.5, 0.0]), np.array([[0, 1], [1, 2]]), 3), torch.tensor([0.5, 0.0, 0.0]))


def test_prompt_ensembles_of_both_references(reference):
    normal, anomalous = CAOYUNKANG_PROMPTS.sentences("metal_nut")
    assert len(normal) == 7 * 22 and len(anomalous) == 4 * 22  # ad_prompts.py: 7 normal, 4 abnormal states, 22 templates
    assert "a photo of a flawless metal_nut" in normal and "a close-up photo of a damaged metal_nut" in anomalous
    assert not any(sentence.endswith(".") for sentence in normal + anomalous)
    assert ANOMALIB_PROMPTS.sentences("bottle") == tuple(reference.prompting.create_prompt_ensemble("bottle"))


class FixedText:
    """Stands in for the CLIP text tower: a fixed unnormalised embedding per sentence."""

    embeddings = {"good x": [2.0, 0.0], "fine x": [0.0, 1.0], "bad x": [0.0, -3.0]}

    def text_features(self, sentences):
        return torch.tensor([self.embeddings[s] for s in sentences])


def test_text_average_is_of_unnormalised_phrases_then_normalised():
    prompts = PromptEnsemble(("good {}", "fine {}"), ("bad {}",), ("{}",))
    text = text_embeddings(FixedText(), prompts, "x")
    # normal: mean([2, 0], [0, 1]) = [1, 0.5] -> [2, 1] / sqrt(5), not the mean of unit vectors ([1, 1] / sqrt(2))
    torch.testing.assert_close(text, torch.tensor([[2 / math.sqrt(5), 1 / math.sqrt(5)], [0.0, -1.0]]))


def normality_direction(normality: float) -> list[float]:
    """A unit 2-d embedding whose softmax(100 cos) against the texts [1, 0] (normal) and [0, 1] is `normality`."""
    gap = math.log(normality / (1 - normality)) / 100  # cos to normal - cos to anomalous
    angle = math.acos(gap / math.sqrt(2)) - math.pi / 4
    return [math.cos(angle), math.sin(angle)]


def test_caoyunkang_scales_and_zero_shot_fusion_on_a_hand_case():
    # a 2x2 grid with 1x1 windows (normality 0.5, 0.75, 0.5, 0.75) and one 2x2 window (normality 0.5)
    small = torch.tensor([normality_direction(n) for n in (0.5, 0.75, 0.5, 0.75)])
    large = torch.tensor([normality_direction(0.5)])
    features = WindowFeatures(torch.zeros(2), (small, large), torch.zeros(4, 3))
    windows = [sliding_windows(2, 1), sliding_windows(2, 2)]
    text = torch.eye(2)
    scored = CaoyunkangRules().score(features, text, windows, None)
    # patch 0: mean over scales of 1/normality = (2 + 2) / 2 = 2 -> textual 1 - 1/2 = 0.5, fused with itself: 0.25
    # patch 1: (4/3 + 2) / 2 = 5/3 -> textual 1 - 3/5 = 0.4 -> 0.2
    torch.testing.assert_close(scored.patch_map, torch.tensor([0.25, 0.2, 0.25, 0.2]))
    assert scored.image_score is None  # the map's maximum (utils/metrics.py)
    # few-shot: memory m1 for the 1x1 windows, m2 for the 2x2 one; per window 0.5 x (1 - max cosine to the memory),
    # averaged per patch (one window per scale here) and over the scales; fused 1 / (1/textual + 1/visual). The
    # reference scores a scale's first window against the previous scale's memory (its loop switches late): m1 again
    m1, m2 = torch.tensor([1.0, -1.0]) / math.sqrt(2), torch.tensor([0.0, 1.0])
    memory = Gallery((m1[None], m2[None]), torch.zeros(1, 3))
    visual = (0.5 * (1 - small @ m1) + 0.5 * (1 - large[0] @ m1)) / 2
    textual = torch.tensor([0.5, 0.4, 0.5, 0.4])
    torch.testing.assert_close(CaoyunkangRules().score(features, text, windows, memory).patch_map,
                               1 / (1 / textual + 1 / visual))
    # the memory holding the query's own windows: visual 0, so the fused map is 0
    own = Gallery((small, large), torch.zeros(1, 3))
    assert CaoyunkangRules().score(features, text, windows, own).patch_map.abs().max() < 1e-6


def test_caoyunkang_preprocessing_is_its_loader_and_transform(backbone):
    from torchvision import transforms

    import cv2

    image = rgb(3, (50, 70, 3))
    size = backbone.image_size
    reference_transform = transforms.Compose([  # WinCLIP/model.py WinClipAD.transform
        transforms.Resize((size, size), Image.BICUBIC), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])])
    bgr = cv2.resize(image[..., ::-1].copy(), (1024, 1024))  # datasets/dataset.py: cv2.imread (BGR), resize 1024
    query = reference_transform(Image.fromarray(bgr))  # eval_WinCLIP.py: test images are not converted to RGB
    reference = reference_transform(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))  # references are
    rules = CaoyunkangRules()
    torch.testing.assert_close(rules.preprocess(backbone, image, reference=False)[0], query, atol=1e-6, rtol=0)
    torch.testing.assert_close(rules.preprocess(backbone, image, reference=True)[0], reference, atol=1e-6, rtol=0)


def test_query_equal_to_a_reference_scores_zero(backbone):
    gray = np.repeat(rgb(5, (SIZE, SIZE, 1)), 3, axis=2)  # channel order cannot matter
    caoyunkang = WinClip(backbone, "washer")
    caoyunkang.set_references([gray, rgb(6)])
    patch_map, _ = caoyunkang.score(gray)
    # visual 0 and so fused 0, except under the first 3x3 window, which the reference scores against the 2x2
    # memory (see the hand case above)
    outside = np.ones((5, 5), bool)
    outside[:3, :3] = False
    assert np.abs(patch_map[outside]).max() < 1e-6 and patch_map[:3, :3].min() > 1e-4
    anomalib = WinClip(backbone, "washer", variant="anomalib")
    zero_shot = anomalib.score(gray)
    anomalib.set_references([rgb(6), gray])
    few_shot = anomalib.score(gray)
    # the visual association is 0 everywhere, so the map and the image score are halved
    np.testing.assert_allclose(few_shot[0], zero_shot[0] / 2, atol=1e-6)
    assert few_shot[1] == pytest.approx(zero_shot[1] / 2, abs=1e-6)


# ---- the anomalib variant is anomalib ------------------------------------------------------------------


def test_anomalib_preprocessing_is_its_pre_processor(backbone):
    from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

    image = rgb(4, (53, 61, 3))
    theirs = Compose([Resize((SIZE, SIZE), antialias=True, interpolation=InterpolationMode.BICUBIC),  # lightning_model.py
                      Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))])
    expected = theirs(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    ours = WinClip(backbone, variant="anomalib").rules.preprocess(backbone, image, reference=False)[0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shots", [0, 2])
def test_anomalib_variant_equals_anomalib(backbone, reference_model, shots):
    ours = WinClip(backbone, "metal_nut", variant="anomalib")
    images = [rgb(10), rgb(11)]
    references = [rgb(20 + k) for k in range(shots)]
    batch = torch.cat([ours.rules.preprocess(backbone, image, reference=False) for image in images])
    reference_batch = torch.cat([ours.rules.preprocess(backbone, image, reference=True) for image in references]) if shots else None
    theirs = reference_model(class_name="metal_nut", reference_images=reference_batch)
    expected = theirs(batch)
    if shots:
        ours.set_references(references)
    for index, image in enumerate(images):
        result = ours.segment(image)
        np.testing.assert_allclose(result.anomaly_map, expected.anomaly_map[index].numpy(), atol=1e-5, rtol=1e-5)
        assert result.image_score == pytest.approx(float(expected.pred_score[index]), abs=1e-5)
    assert expected.anomaly_map.std() > 1e-4  # not a flat map compared with a flat map


# ---- method, config and command line -------------------------------------------------------------------


def test_bad_settings_are_config_errors(backbone):
    with pytest.raises(ConfigError, match="unknown winclip variant 'paper'"):
        WinClip(backbone, variant="paper")
    with pytest.raises(ConfigError, match="window sizes"):
        WinClip(backbone, scales=(2, 9))
    with pytest.raises(ConfigError, match="--shots must be 0"):
        WinClip(backbone, shots=-1)


def test_prepare_draws_references_with_the_seed(backbone, tmp_path):
    folder = tmp_path / "normal"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(rgb(30 + index)).save(folder / f"{index}.png")
    method = WinClip(backbone, shots=2, reference_dir=folder, seed=111)
    method.prepare("washer", [], "object", tmp_path)
    again = WinClip(backbone, shots=2, reference_dir=folder, seed=111)
    again.prepare("washer", [], "object", tmp_path)
    assert len(method.references) == 2 and method.references == again.references
    assert method.gallery is not None and method.gallery.windows[0].shape[0] == 2 * len(sliding_windows(backbone.grid, 2))
    with pytest.raises(IapasError, match="--shots 9 needs 9 normal reference images"):
        WinClip(backbone, shots=9, reference_dir=folder).prepare("washer", [], "object", tmp_path)
    with pytest.raises(IapasError, match="needs --reference-images DIR"):
        WinClip(backbone, shots=1).prepare("washer", [], "object", tmp_path)


def test_cli_few_shot_segment_and_eval(capsys, weights_dir, tmp_path):
    spec = SynthSpec(categories=("washer",), defects=("hole",), train_good=3, test_good=1, per_defect=2, size=64)
    root = write_synth_dataset(tmp_path / "data", spec)
    picture = next((root / "washer" / "test" / "hole").glob("*.png"))
    normal = root / "washer" / "train" / "good"
    out = tmp_path / "seg"
    code = main(["segment", str(picture), "--method", "winclip", "--shots", "2", "--reference-images", str(normal),
                 "--winclip-variant", "anomalib", "-o", str(out), "--weights", str(weights_dir), "--no-progress"])
    capsys.readouterr()
    assert code == 0 and json.loads((out / f"{picture.name}.json").read_text())["method"] == "winclip"
    code = main(["segment", str(picture), "--method", "winclip", "--shots", "1", "-o", str(tmp_path / "x"),
                 "--weights", str(weights_dir), "--no-progress"])
    assert code == 2 and "--shots 1 needs --reference-images DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(picture), "--method", "winclip", "--winclip-variant", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err
    code = main(["eval", "--dataset", "mvtec", "--root", str(root), "--method", "winclip", "--shots", "1",
                 "--image-score", "method", "-o", str(tmp_path / "res"), "--weights", str(weights_dir), "--no-progress"])
    assert code == 0 and "| **mean** |" in capsys.readouterr().out
    run = json.loads((tmp_path / "res" / "winclip" / "run.json").read_text())
    assert run["config"]["clip_methods"]["shots"] == 1 and run["config"]["clip_methods"]["winclip_variant"] == "caoyunkang"


def test_default_backbone_is_vit_b_16_plus_240_when_present(weights_dir, reference, tmp_path):
    from iapas.config import Config
    from iapas.methods import METHODS
    from iapas.weights.manifest import load_manifest

    entry = next(e for e in load_manifest() if e.name == "clip-vit-b-16-plus-240")
    assert entry.expected_path == "ViT-B-16-plus-240.pt"
    config = Config(weights_dir=str(weights_dir))
    assert METHODS.get("winclip")(config, ()).backbone.name == find_weights("clip", weights_dir)[1].name  # fallback
    local = tmp_path / "weights"
    local.mkdir()
    (local / "demo").symlink_to(weights_dir / "demo")
    (local / "ViT-B-16-plus-240.pt").write_bytes(reference.checkpoint.read_bytes())
    method = METHODS.get("winclip")(Config(weights_dir=str(local)), ())
    assert method.backbone.name == "ViT-B-16-plus-240.pt.hf" and method.variant == "caoyunkang"
