"""MuSc: its scoring modules equal the official ones on the same features; the method on a tiny random CLIP and DINOv2."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iapas.errors import IapasError
from iapas.methods.musc import MIN_SET_SIZE
from iapas.methods.musc.model import ClipFeatures, DinoFeatures, MuSc, default_layers, min_set_size
from iapas.methods.musc.scoring import aggregate, mutual_scores, rescore, subsets
from tests.reference_source import reference_copy


def reference_module(folder: Path, relative: str, name: str):
    """One file of the official MuSc, imported on its own (models/musc.py imports its dataset modules)."""
    spec = importlib.util.spec_from_file_location(name, folder / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    folder = reference_copy("MuSc", tmp_path_factory.mktemp("musc"))
    sys.dont_write_bytecode = True
    return {name: reference_module(folder, f"models/modules/_{name}.py", f"musc_reference_{name}") for name in ("LNAMD", "MSM", "RsCIN")}


def random_tokens(count: int, grid: int, channels: int, layers: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, 1 + grid * grid, channels, generator=generator) for _ in range(layers)]


def official_set_scores(official, tokens: list[torch.Tensor], degrees=(1, 3, 5)) -> torch.Tensor:
    """models/musc.py make_category_data's LNAMD -> MSM -> averages, on the official modules, one batch of features."""
    layers = list(range(1, len(tokens) + 1))
    per_degree = torch.tensor([]).double()
    for r in degrees:
        lnamd = official["LNAMD"].LNAMD(device="cpu", r=r, feature_dim=tokens[0].shape[-1], feature_layer=layers)
        features = lnamd._embed(tokens)
        features /= features.norm(dim=-1, keepdim=True)
        per_layer = torch.tensor([]).double()
        for layer in range(len(layers)):
            scores = official["MSM"].MSM(Z=features[:, :, layer, :], device="cpu", topmin_min=0, topmin_max=0.3)
            per_layer = torch.cat((per_layer, scores.unsqueeze(0).cpu()), dim=0)
        per_degree = torch.cat((per_degree, per_layer.mean(0).unsqueeze(0)), dim=0)
    return per_degree.mean(0)


@pytest.mark.parametrize("degree", [1, 3, 5])
def test_aggregation_equals_official_lnamd(official, degree):
    tokens = random_tokens(3, 6, 8, 2)
    expected = official["LNAMD"].LNAMD(device="cpu", r=degree, feature_dim=8, feature_layer=[1, 2])._embed(tokens)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    ours = aggregate([layer[:, 1:] for layer in tokens], degree)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_mutual_scores_equal_official_msm_in_small_chunks(official):
    features = torch.nn.functional.normalize(torch.randn(9, 16, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    expected = official["MSM"].MSM(Z=features, device="cpu", topmin_min=0, topmin_max=0.3)
    chunked = mutual_scores(features, chunk_bytes=16 * 16 * 4 * 2)  # two images per distance block
    whole = mutual_scores(features)
    assert chunked.dtype == torch.float64
    torch.testing.assert_close(chunked, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)


def test_mutual_score_by_hand():
    # 5 images of one patch on a line: N - 1 = 4 others, int(0.3 * 4) = 1 -> each patch's nearest other image
    features = torch.tensor([[[0.0]], [[1.0]], [[3.0]], [[6.0]], [[10.0]]])
    assert mutual_scores(features)[:, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("neighbours", [(1, 2, 3), (1, 8, 9)])
def test_rescore_equals_official_rscin(official, neighbours):
    generator = np.random.default_rng(2)
    scores = generator.random(12)
    tokens = generator.standard_normal((12, 5)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    expected = official["RsCIN"].RsCIN(scores, list(tokens), k_list=list(neighbours))
    np.testing.assert_allclose(rescore(scores, tokens, neighbours), expected, rtol=1e-6, atol=1e-7)


def test_rescore_by_hand():
    # k = 1 keeps each image's most similar one: itself (unit tokens) -> the normalised scores unchanged
    tokens = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(rescore(np.array([2.0, 4.0, 3.0]), tokens, (1,)), [0.0, 1.0, 0.5])
    assert rescore(np.array([1.0, 1.0, 1.0]), tokens, (1, 2)).tolist() == [0.0, 0.0, 0.0]  # chosen: no 0/0


def test_whole_set_scoring_equals_official_pipeline(official):
    tokens = random_tokens(6, 5, 12, 2, seed=3)
    expected = official_set_scores(official, tokens)
    musc = MuSc.__new__(MuSc)  # the scoring path alone, on features (no backbone)
    musc.degrees, musc.chunk_bytes, musc.progress, musc.neighbours, musc.dataset = (1, 3, 5), 5 * 25 * 4, None, None, "mvtec"
    musc.size = 35
    musc.features = type("F", (), {"backbone": type("B", (), {"device": torch.device("cpu")})()})()
    class_tokens = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(4)), dim=-1)
    patches, images = MuSc.score_features(musc, [layer[:, 1:] for layer in tokens], class_tokens)
    torch.testing.assert_close(patches, expected, rtol=1e-5, atol=1e-6)
    # models/musc.py: image score = max of the map up-sampled (align_corners=True) to the input size, then RsCIN
    upsampled = torch.nn.functional.interpolate(expected.view(6, 1, 5, 5), size=35, mode="bilinear", align_corners=True)
    official_images = official["RsCIN"].RsCIN(upsampled.reshape(6, -1).max(-1).values.numpy(), list(class_tokens.numpy()), k_list=[1, 2, 3])
    np.testing.assert_allclose(images, official_images, rtol=1e-5, atol=1e-6)


def test_minimum_set_size_is_five():
    assert min_set_size() == MIN_SET_SIZE == 5
    assert default_layers(24) == (6, 12, 18, 24) and default_layers(12) == (3, 6, 9, 12)


def test_subsets_follow_the_reference_division():
    import random

    groups = ["good"] * 5 + ["crack"] * 4
    parts = subsets(groups, 2)
    assert sorted(i for part in parts for i in part) == list(range(9))
    random.seed(42)  # datasets/mvtec.py sub_datasets, by hand
    good, crack = list(range(5)), list(range(5, 9))
    random.shuffle(good)
    random.shuffle(crack)
    assert parts == [[good[0], good[2], good[4], crack[0], crack[2]], [good[1], good[3], crack[1], crack[3]]]
    assert subsets(groups, 1) == [list(range(9))]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from iapas.weights.demo import build_demo_clip

    return build_demo_clip(tmp_path_factory.mktemp("clip") / "clip-demo")


def images(count: int, seed: int = 0, size=(40, 48)) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    return [generator.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def test_clip_musc_maps_equal_the_official_scoring_of_its_features(clip_dir, official):
    from iapas.backends.clip import ClipBackbone

    backbone = ClipBackbone(clip_dir)
    musc = MuSc(ClipFeatures(backbone), size=32, batch_size=2)
    pictures = images(6)
    results = musc.segment_set(pictures)
    # the same features through the official modules: tokens after blocks 1 and 2 with a class token in front
    pixels = backbone.preprocess(pictures, 32)
    with torch.no_grad():
        pooled, hidden = backbone.encode_tokens(backbone.tokens(pixels), (1, 2))
    expected = official_set_scores(official, hidden)
    grid = 4
    for result, picture, scores in zip(results, pictures, expected):
        assert result.anomaly_map.shape == picture.shape[:2] and result.method == "musc"
        heat = torch.nn.functional.interpolate(scores.view(1, 1, grid, grid), size=picture.shape[:2], mode="bilinear", align_corners=True)
        np.testing.assert_allclose(result.anomaly_map * 2, heat[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    cls = (pooled / pooled.norm(dim=-1, keepdim=True)).numpy()
    upsampled = torch.nn.functional.interpolate(expected.view(6, 1, grid, grid), size=32, mode="bilinear", align_corners=True)
    official_images = official["RsCIN"].RsCIN(upsampled.reshape(6, -1).max(-1).values.numpy(), list(cls), k_list=[1, 2, 3])
    np.testing.assert_allclose([r.image_score for r in results], official_images, rtol=1e-5, atol=1e-6)


def test_a_set_below_the_minimum_is_refused(clip_dir):
    from iapas.backends.clip import ClipBackbone

    musc = MuSc(ClipFeatures(ClipBackbone(clip_dir)), size=32)
    with pytest.raises(IapasError, match="at least 5 images"):
        musc.segment_set(images(4))
    with pytest.raises(IapasError, match="not one image"):
        musc.segment(images(1)[0])


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    from iapas.weights.demo import build_demo_dinov2

    return build_demo_dinov2(tmp_path_factory.mktemp("dino") / "dinov2-demo")


def test_dinov2_features_are_the_normed_blocks(dinov2_dir):
    from transformers import Dinov2Model

    from iapas.backends.dinov2 import Dinov2Backbone

    backbone = Dinov2Backbone(dinov2_dir)
    pixels = torch.rand(2, 3, 28, 28)
    patches, cls = backbone.normed_layers(pixels, (1, 2))
    model = Dinov2Model.from_pretrained(dinov2_dir).eval()
    with torch.no_grad():
        output = model(pixel_values=pixels, output_hidden_states=True)
        block = output.hidden_states[1]
        expected = torch.nn.functional.layer_norm(block, block.shape[-1:], model.layernorm.weight, model.layernorm.bias,
                                                  model.config.layer_norm_eps)[:, 1:]
    torch.testing.assert_close(patches[0], expected)
    torch.testing.assert_close(cls, output.pooler_output)
    musc = MuSc(DinoFeatures(backbone), size=28)
    results = musc.segment_set(images(5, seed=1))
    assert all(0 <= r.anomaly_map.min() and r.anomaly_map.max() <= 1 for r in results)


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, picture in enumerate(images(count, seed)):
        paths.append(folder / f"img{index}.png")
        Image.fromarray(picture).save(paths[-1])
    return paths


def test_segment_folder_scores_the_set_together_and_resumes_as_one_unit(tmp_path, clip_dir, capsys):
    from tests.cli_runner import error_lines, run

    folder, out = tmp_path / "set", tmp_path / "out"
    write_images(folder, 5)
    config = tmp_path / "musc.yaml"
    config.write_text("musc:\n  image_size: 32\n", encoding="utf-8")
    common = ("--method", "musc", "--clip", clip_dir, "--config", config, "--no-progress", "-o", out)
    code, _, err = run(capsys, "segment", folder, *common)
    assert code == 0, err
    records = [json.loads((out / f"img{i}.png.json").read_text()) for i in range(5)]
    assert {r["fingerprint"] for r in records} == {records[0]["fingerprint"]} and "+set-" in records[0]["fingerprint"]
    assert records[0]["set"]["images"] == 5 and records[0]["method"] == "musc"
    first = np.load(out / "img0.png.npy")
    code, _, err = run(capsys, "segment", folder, *common)  # the same set: nothing to do
    assert code == 0 and "5 skipped" in err
    write_images(folder / "more", 1, seed=9)  # one more image: the whole set is rescored, and the run says so
    code, _, err = run(capsys, "segment", folder, *common)
    assert code == 0 and "5 of the 6 images have results from another set" in err and "6 segmented" in err
    assert not np.array_equal(np.load(out / "img0.png.npy"), first)  # img0's score now depends on six images
    few = tmp_path / "few"
    write_images(few, 4)
    code, _, err = run(capsys, "segment", few, *common[:-1], tmp_path / "out-few")
    assert code == 2 and error_lines(err) == ["iapas: error: --method musc scores a set of at least 5 images together; 4 images given"]
    code, _, err = run(capsys, "segment", folder, *common[:-1], tmp_path / "out-ray", "--engine", "ray")
    assert code == 2 and "use --engine local" in err


def test_eval_scores_each_category_as_one_set(tmp_path, clip_dir, capsys):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from iapas.backends.clip import ClipBackbone
    from iapas.cli import main
    from iapas.data.datasets import load_dataset
    from iapas.data.synth import SynthSpec, write_synth_dataset
    from iapas.images import load_image

    root = write_synth_dataset(tmp_path / "synth", SynthSpec(categories=("washer",), defects=("scratch", "hole"), train_good=1,
                                                             test_good=3, per_defect=2, size=48, seed=5))
    config = tmp_path / "musc.yaml"
    config.write_text("musc:\n  image_size: 32\n", encoding="utf-8")
    argv = ["eval", "--dataset", "mvtec", "--root", str(root), "-o", str(tmp_path / "eval"), "--method", "musc",
            "--clip", str(clip_dir), "--config", str(config), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads(next((tmp_path / "eval").rglob("categories/washer.json")).read_text())
    samples = load_dataset("mvtec", root).samples("washer")
    assert record["images"] == len(samples) == 7
    musc = MuSc(ClipFeatures(ClipBackbone(clip_dir)), size=32, dataset="mvtec")
    results = musc.segment_set([load_image(s.image_path).pixels for s in samples], [s.image_path.parent.name for s in samples])
    labels, scores = [s.label for s in samples], [r.image_score for r in results]
    assert record["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert record["metrics"]["image_ap"] == pytest.approx(average_precision_score(labels, scores))

    # an interrupted category (a partial state of 2 images, here with false scores) is scored again as a whole set
    from iapas.evaluation.evaluate import CategoryState
    from iapas.evaluation.protocols import PROTOCOLS

    result_path = next((tmp_path / "eval").rglob("categories/washer.json"))
    run_dir = result_path.parents[1]
    state = CategoryState(PROTOCOLS.get("full").scorer(100, run_dir / "partial" / "washer.maps"), record["fingerprint"])
    state.done, state.labels, state.scores = [str(samples[0].image_path.relative_to(root)), "x"], [0, 1], [9.0, -9.0]
    state.save(run_dir / "partial" / "washer.npz")
    result_path.unlink()
    assert main(argv) == 0, capsys.readouterr().err
    again = json.loads(result_path.read_text())
    assert again["images"] == 7 and again["metrics"] == pytest.approx(record["metrics"])


def test_a_second_run_on_a_set_being_scored_is_refused(tmp_path, clip_dir, capsys):
    from iapas.runs.claims import claim_path, try_claim
    from iapas.runs.sets import SET_CLAIM
    from tests.cli_runner import run

    folder, out = tmp_path / "set", tmp_path / "out"
    write_images(folder, 5)
    config = tmp_path / "musc.yaml"
    config.write_text("musc:\n  image_size: 32\n", encoding="utf-8")
    with try_claim(claim_path(out, SET_CLAIM)):  # another run holds the set
        code, _, err = run(capsys, "segment", folder, "--method", "musc", "--clip", clip_dir, "--config", config, "--no-progress", "-o", out)
    assert code == 1 and "another run is scoring a set in" in err and not list(out.glob("*.png.json"))
