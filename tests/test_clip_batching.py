"""`--batch-size` for the CLIP methods: B images in one CLIP forward give the one-by-one maps; `--runtime` is refused for them.

Every method runs on the tiny random demo CLIP loaded through the real loader, with its learned parts drawn
at random under a fixed seed. Batched arithmetic may round differently from a batch of one, so maps and image
scores are compared within TOLERANCE.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.errors import InputImageError

TOLERANCE = 1e-5  # absolute, on maps in [0, 1] and on image scores (measured at most 2e-6, AdaCLIP)
SHAPES = ((70, 90, 3), (50, 50, 3), (64, 48, 3))  # a batch of three sizes: each image is resized alone before stacking


def picture(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def winclip(clip_dir, variant="caoyunkang"):
    from iapas.methods.winclip import WinClip

    return WinClip(ClipBackbone(clip_dir), "washer", variant=variant)


def anomalib_few_shot(clip_dir):
    model = winclip(clip_dir, "anomalib")
    model.set_references([picture(20, (40, 60, 3)), picture(21, (60, 40, 3))])  # WinCLIP+ memory, also encoded as one batch
    return model


def adaclip(clip_dir):
    from iapas.methods.adaclip.model import AdaClip, AdaClipSettings, default_layers

    backbone = ClipBackbone(clip_dir)
    torch.manual_seed(0)
    model = AdaClip(backbone, AdaClipSettings(default_layers(backbone.depth), 3, 2, image_size=48))
    model.prepare("washer", [], "object", None)
    return model.eval()


def anomalyclip(clip_dir):
    from iapas.methods.anomalyclip.model import AnomalyClip

    torch.manual_seed(0)
    return AnomalyClip(ClipBackbone(clip_dir)).eval()


def faprompt(clip_dir):
    from iapas.methods.faprompt.model import FAPrompt

    torch.manual_seed(0)
    return FAPrompt(ClipBackbone(clip_dir)).eval()


def genclip(clip_dir):
    from iapas.methods.genclip import GenClip, GenClipSettings

    backbone = ClipBackbone(clip_dir)  # GenCLIP moves its backbone to its own input size: a backbone of its own
    torch.manual_seed(0)
    model = GenClip(backbone, GenClipSettings.for_backbone(backbone, input_size=64))
    with torch.no_grad():
        for linear in model.prompts.vision_prompt:  # MLP_T starts at zero; random, each image's features reach its prompts
            linear.weight.normal_(0, 0.5)
    model.prepare("washer", [], "object", None)
    return model.eval()


# method -> (builder, forwards of the CLIP's patch embedding per batch: GenCLIP's class-name filter is a second one)
METHODS = {"winclip": (winclip, 1), "winclip-anomalib-2-shot": (anomalib_few_shot, 1), "adaclip": (adaclip, 1),
           "anomalyclip": (anomalyclip, 1), "faprompt": (faprompt, 1), "genclip": (genclip, 2)}


def assert_same(batched, alone):
    assert batched.anomaly_map.shape == alone.anomaly_map.shape
    np.testing.assert_allclose(batched.anomaly_map, alone.anomaly_map, rtol=0, atol=TOLERANCE)
    assert batched.image_score == pytest.approx(alone.image_score, abs=TOLERANCE)
    assert batched.prompts == alone.prompts and batched.method == alone.method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_batch_of_three_sizes_is_one_clip_forward_and_gives_the_one_by_one_maps(clip_dir, name):
    build, forwards = METHODS[name]
    model = build(clip_dir)
    images = [picture(seed, shape) for seed, shape in enumerate(SHAPES)]
    alone = [model.segment(image) for image in images]
    batch_sizes = []
    hook = model.backbone.clip.vision_model.embeddings.patch_embedding.register_forward_hook(
        lambda module, inputs, output: batch_sizes.append(len(inputs[0])))
    try:
        batched = model.segment_outcomes(images, 3)
    finally:
        hook.remove()
    assert batch_sizes == [3] * forwards  # the three images went through CLIP together, stacked
    for image, result, reference in zip(images, batched, alone):
        assert result.anomaly_map.shape == image.shape[:2]
        assert_same(result, reference)
    assert len({float(np.abs(r.anomaly_map).sum()) for r in batched}) == 3  # three different maps, not one copied


@pytest.mark.parametrize("name", ["winclip", "adaclip", "genclip"])
def test_a_bad_image_fails_in_its_place_and_the_others_succeed(clip_dir, name):
    model = METHODS[name][0](clip_dir)
    good = [picture(1, (60, 80, 3)), picture(2, (48, 48, 3))]
    outcomes = model.segment_outcomes([good[0], np.zeros((1, 40, 3), np.uint8), good[1]], 3)
    assert isinstance(outcomes[1], InputImageError) and "image too small" in str(outcomes[1])
    for outcome, image in zip((outcomes[0], outcomes[2]), good):
        assert_same(outcome, model.segment(image))
    with pytest.raises(InputImageError, match="must be uint8"):
        model.segment(good[0].astype(np.float32))  # one image alone raises, as before


def test_a_failing_forward_is_retried_alone_so_the_error_is_the_culprits(clip_dir, monkeypatch):
    model = anomalyclip(clip_dir)
    images = [picture(1, (60, 80, 3)), picture(2, (33, 33, 3)), picture(3, (48, 48, 3))]
    alone = [model.segment(image) for image in (images[0], images[2])]
    encode = model.encode_batch

    def fails_on_33_px(batch):
        if any(image.shape[0] == 33 for image in batch):
            raise RuntimeError("cannot encode a 33 px image")
        return encode(batch)

    monkeypatch.setattr(model, "encode_batch", fails_on_33_px)
    outcomes = model.segment_outcomes(images, 3)
    assert isinstance(outcomes[1], RuntimeError) and "33 px" in str(outcomes[1])
    assert_same(outcomes[0], alone[0])
    assert_same(outcomes[2], alone[1])


@pytest.fixture
def prompts_file(clip_dir, tmp_path):
    return anomalyclip(clip_dir).save(tmp_path / "anomalyclip.pt")


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index, shape in enumerate(SHAPES + ((40, 40, 3),)):
        Image.fromarray(picture(index, shape)).save(images / f"part_{index}.png")
    (images / "broken.png").write_bytes(b"not an image")
    return images


def test_cli_segment_and_bench_batch_a_clip_method(capsys, weights_dir, prompts_file, folder, tmp_path):
    def segment(out, *extra):
        return main(["segment", str(folder), "-o", str(out), "--method", "anomalyclip", "--prompts", str(prompts_file),
                     "--weights", str(weights_dir), "--no-progress", *extra])

    assert segment(tmp_path / "alone") == 1 and segment(tmp_path / "batched", "--batch-size", "3") == 1  # broken.png
    err = capsys.readouterr().err
    assert err.count("4 segmented") == 2 and "broken.png" in err
    for index in range(4):
        alone, batched = (np.load(tmp_path / out / f"part_{index}.png.npy") for out in ("alone", "batched"))
        np.testing.assert_allclose(batched, alone, rtol=0, atol=TOLERANCE)
        scores = [json.loads((tmp_path / out / f"part_{index}.png.json").read_text())["image_score"] for out in ("alone", "batched")]
        assert scores[1] == pytest.approx(scores[0], abs=TOLERANCE)
    report = tmp_path / "bench.json"
    assert main(["bench", "--images", "3", "--size", "64", "--warmup", "0", "--batch-size", "3", "--method", "anomalyclip",
                 "--prompts", str(prompts_file), "--weights", str(weights_dir), "--json", str(report)]) == 0
    record = json.loads(report.read_text())
    assert record["batched"] and record["batch_size"] == 3 and record["iapas"]["images"] == 3


@pytest.mark.parametrize("command, options, named", [
    ("segment", ["--runtime", "onnx"], "--runtime onnx"),
    ("segment", ["--runtime", "torch", "--detector-runtime", "openvino"], "--detector-runtime openvino"),
    ("bench", ["--runtime", "openvino"], "--runtime openvino"),
])
def test_a_runtime_other_than_torch_is_refused_for_a_clip_method(capsys, weights_dir, folder, tmp_path, command, options, named):
    image = str(folder / "part_0.png")
    argv = (["segment", image, "-o", str(tmp_path / "out")] if command == "segment" else ["bench", image, "--repeat", "1"])
    assert main(argv + ["--method", "winclip", "--weights", str(weights_dir), *options]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"iapas: error: {named} applies to IAP-AS's exported image encoders (Grounding DINO, SAM), "
                                "not to --method winclip, whose CLIP runs in torch (config masking.runtime, detection.runtime)"]
    assert not (tmp_path / "out" / "iapas-fingerprint.json").exists()  # refused before anything is recorded
