"""AnomalyDINO: equal to the authors' code (its own preprocessing, masking, rotations, faiss search, maps) and to
anomalib 2.7's AnomalyDINO (image scores) when all are handed the same tiny random DINOv2's features."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iapas.errors import ConfigError, IapasError
from iapas.methods.anomalydino.model import AnomalyDino, mean_top_percent, prepared_pixels
from iapas.methods.anomalydino.preprocess import settings
from tests.reference_source import reference_copy

FAISS = Path(sys.prefix) / "reference-faiss"  # `make install`: faiss-cpu for the reference side only


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A tiny random Dinov2Model whose final norm is scaled up, so the PCA foreground test (PC1 > 10) has patches to keep."""
    from transformers import Dinov2Config, Dinov2Model

    directory = tmp_path_factory.mktemp("dino") / "dinov2-tiny"
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=7,
                                     image_size=28)).eval()
    with torch.no_grad():
        model.layernorm.weight.mul_(6)
    model.save_pretrained(directory)
    return directory


def picture(seed: int, size=(90, 75), defect: bool = False) -> np.ndarray:
    """A textured object in the centre of a plain background (the layout the masking rule assumes)."""
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), 120, np.uint8) + rng.integers(0, 6, (*size, 3), dtype=np.uint8)
    height, width = size
    image[height // 4:3 * height // 4, width // 4:3 * width // 4] = rng.integers(0, 256, (height // 2 + 1, width // 2 + 1, 3))[
        :3 * height // 4 - height // 4, :3 * width // 4 - width // 4]
    if defect:
        image[height // 2:height // 2 + 8, width // 2:width // 2 + 8] = 255
    return image


def write_dataset(root: Path) -> dict[str, np.ndarray]:
    """data_root/obj/{train/good, test/good, test/bad} as src/detection.py reads it; returns the test images by key."""
    tests = {}
    for index in range(3):
        folder = root / "obj" / "train" / "good"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture(index)).save(folder / f"{index:03d}.png")
    for kind, defect in (("good", False), ("bad", True)):
        folder = root / "obj" / "test" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(2):
            image = picture(10 + index + 5 * defect, defect=defect)
            Image.fromarray(image).save(folder / f"{index:03d}.png")
            tests[f"{kind}/{index:03d}"] = image
    return tests


class HubDinov2(torch.nn.Module):
    """What torch.hub.load('facebookresearch/dinov2', ...) gives the authors' wrapper, backed by our tiny Dinov2Model."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        from transformers import Dinov2Model

        self.inner = Dinov2Model.from_pretrained(directory).eval()
        self.patch_size = self.inner.config.patch_size

    def get_intermediate_layers(self, x, n=1):
        # dinov2 get_intermediate_layers(x, n=1, norm=True): the last block's patch tokens through the final norm
        return (self.inner(pixel_values=x).last_hidden_state[:, 1:],)


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    if not (FAISS / "faiss").is_dir():
        pytest.skip(f"faiss-cpu for the reference side is absent ({FAISS}; `make install` puts it there)")
    folder = reference_copy("AnomalyDINO", tmp_path_factory.mktemp("anomalydino"))
    sys.dont_write_bytecode = True
    sys.path[:0] = [str(folder), str(FAISS)]
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "src" or name.startswith("src.")}
    try:
        import src.backbones as backbones
        import src.detection as detection
        yield backbones, detection
    finally:
        for name in [name for name in sys.modules if name == "src" or name.startswith("src.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        for path in (str(folder), str(FAISS)):
            sys.path.remove(path)


@pytest.mark.parametrize("masking, rotation", [(False, False), (True, True)])
def test_equals_the_authors_code(authors, dino_dir, tmp_path, monkeypatch, masking, rotation):
    import tifffile

    from iapas.backends.dinov2 import Dinov2Backbone

    backbones, detection = authors
    monkeypatch.setattr(torch.hub, "load", lambda repo, name: HubDinov2(dino_dir))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)  # the authors time on CUDA
    tests = write_dataset(tmp_path / "data")
    wrapper = backbones.DINOv2Wrapper("dinov2_vits14", "cpu", smaller_edge_size=56)
    scores, _, _ = detection.run_anomaly_detection(
        wrapper, "obj", str(tmp_path / "data"), 2, {"obj": ["bad"]}, str(tmp_path / "plots"), save_examples=False,
        masking=masking, rotation=rotation, knn_metric="L2_normalized", knn_neighbors=1, faiss_on_cpu=True, seed=0,
        save_patch_dists=True, save_tiffs=True)
    mode = {(False, False): "force_no_mask_no_rotation", (True, True): "force_mask_rotation"}[(masking, rotation)]
    method = AnomalyDino(Dinov2Backbone(dino_dir), shots=2, resolution=56, preprocess=mode)
    method.prepare("obj", sorted((tmp_path / "data/obj/train/good").glob("*.png")), "object", tmp_path)
    assert [p.name for p in method.references] == ["000.png", "001.png"]  # the first K sorted (seed 0)
    saved = tmp_path / "plots/anomaly_maps/seed=0/obj/test"
    kept = 0
    for key, image in tests.items():
        distances, grid = method.patch_distances(image)
        expected = np.load(saved / f"{key}.npy")
        np.testing.assert_allclose(distances.reshape(grid), expected, rtol=1e-4, atol=1e-5)
        result = method.segment(image)
        assert result.image_score == pytest.approx(scores[f"{key}.png"], rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(result.anomaly_map * 2, tifffile.imread(saved / f"{key}.tiff"), rtol=1e-4, atol=1e-5)
        kept += int((expected > 0).sum())
    assert kept > 0 and (not masking or kept < sum(np.load(saved / f"{k}.npy").size for k in tests))  # masking masked some


def test_image_scores_equal_anomalib(dino_dir, monkeypatch):
    """anomalib 2.7's AnomalyDINOModel on the same features and pixels: the same patch distances' top-1 % score."""
    from anomalib.models.image.anomaly_dino import torch_model

    from iapas.backends.dinov2 import Dinov2Backbone

    backbone = Dinov2Backbone(dino_dir)

    class Features(torch.nn.Module):  # anomalib's timm DINOv2 at its last block, norm=True: our model's normed tokens
        patch_size = 7

        def __init__(self, **_):
            super().__init__()

        def forward(self, x):
            return {"blocks.11": backbone.model(pixel_values=x).last_hidden_state[:, 1:]}

    monkeypatch.setattr(torch_model, "TimmFeatureExtractor", Features)
    reference = torch_model.AnomalyDINOModel(num_neighbours=1, encoder_name="vit_small_patch14_dinov2", masking=False)
    method = AnomalyDino(backbone, shots=2, resolution=56, preprocess="force_no_mask_no_rotation")
    normals = [picture(0), picture(1)]
    method.set_references(normals)
    reference.train()
    with torch.no_grad():
        for image in normals:
            reference(prepared_pixels(image, 56, 7))
        reference.fit()
        reference.eval()
        for seed, defect in ((10, False), (16, True)):
            image = picture(seed, defect=defect)
            outcome = reference(prepared_pixels(image, 56, 7))
            assert method.segment(image).image_score == pytest.approx(float(outcome.pred_score), rel=1e-5)


def test_mean_top_percent_and_rules_by_hand():
    assert mean_top_percent(np.arange(50.0)) == 49.0  # fewer than 100 patches: the maximum
    assert mean_top_percent(np.arange(300.0)) == pytest.approx((299 + 298 + 297) / 3)
    assert settings("agnostic", "mvtec", "screw") == settings("informed", "mvtec", "hazelnut")  # masked and rotated
    assert not settings("agnostic", "mvtec", "bottle").masking and settings("agnostic", "mvtec", "bottle").rotation
    assert settings("informed", "visa", "pcb1").masking and not settings("informed", "visa", "pcb1").rotation
    assert not settings("agnostic", "", "my_part").masking  # outside the tables: no masking
    with pytest.raises(ConfigError):
        settings("clever", "mvtec", "screw")


def test_one_line_errors(dino_dir, tmp_path):
    from iapas.backends.dinov2 import Dinov2Backbone

    backbone = Dinov2Backbone(dino_dir)
    with pytest.raises(ConfigError, match="at least 1 normal reference"):
        AnomalyDino(backbone, shots=0)
    method = AnomalyDino(backbone, shots=3, resolution=56)
    with pytest.raises(IapasError, match="needs --reference-images DIR"):
        method.prepare("obj", [], "object", tmp_path)
    with pytest.raises(IapasError, match="no references"):
        method.segment(picture(0))


def test_segment_cli_with_reference_images(dino_dir, tmp_path, capsys):
    import json

    from tests.cli_runner import error_lines, run

    references, inputs = tmp_path / "normal", tmp_path / "inputs"
    references.mkdir()
    inputs.mkdir()
    for index in range(2):
        Image.fromarray(picture(index)).save(references / f"{index}.png")
    Image.fromarray(picture(16, defect=True)).save(inputs / "bad.png")
    config = tmp_path / "dino.yaml"
    config.write_text(f"anomalydino:\n  weights: {dino_dir}\n  resolution: 56\n", encoding="utf-8")
    code, _, err = run(capsys, "segment", inputs, "--method", "anomalydino", "--shots", 2, "--reference-images", references,
                       "--config", config, "--no-progress", "-o", tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "bad.png.json").read_text())
    method = AnomalyDino(__import__("iapas.backends.dinov2", fromlist=["x"]).Dinov2Backbone(dino_dir), shots=2, resolution=56)
    method.set_references([picture(0), picture(1)])
    assert record["method"] == "anomalydino" and record["image_score"] == pytest.approx(method.segment(picture(16, defect=True)).image_score)
    code, _, err = run(capsys, "segment", inputs, "--method", "anomalydino", "--config", config, "--no-progress", "-o", tmp_path / "o2")
    assert code == 2 and error_lines(err) == ["iapas: error: --shots 1 needs --reference-images DIR (a folder of normal images)"]


def test_eval_uses_the_first_k_normal_images_and_the_method_score(dino_dir, tmp_path, capsys):
    import json

    from sklearn.metrics import roc_auc_score

    from iapas.backends.dinov2 import Dinov2Backbone
    from iapas.cli import main
    from iapas.data.datasets import load_dataset
    from iapas.data.synth import SynthSpec, write_synth_dataset
    from iapas.images import load_image

    root = write_synth_dataset(tmp_path / "synth", SynthSpec(categories=("washer",), defects=("scratch",), train_good=3,
                                                             test_good=2, per_defect=2, size=64, seed=3))
    config = tmp_path / "dino.yaml"
    config.write_text(f"anomalydino:\n  weights: {dino_dir}\n  resolution: 56\n", encoding="utf-8")
    assert main(["eval", "--dataset", "mvtec", "--root", str(root), "-o", str(tmp_path / "eval"), "--method", "anomalydino",
                 "--shots", "2", "--config", str(config), "--no-progress"]) == 0, capsys.readouterr().err
    record = json.loads(next((tmp_path / "eval").rglob("categories/washer.json")).read_text())
    dataset = load_dataset("mvtec", root)
    method = AnomalyDino(Dinov2Backbone(dino_dir), shots=2, resolution=56, dataset="mvtec")
    method.prepare("washer", dataset.calibration_images("washer"), "object", tmp_path)
    assert [p.name for p in method.references] == sorted(p.name for p in dataset.calibration_images("washer"))[:2]
    samples = dataset.samples("washer")
    scores = [method.segment(load_image(s.image_path).pixels).image_score for s in samples]
    assert record["metrics"]["image_auroc"] == pytest.approx(roc_auc_score([s.label for s in samples], scores))
