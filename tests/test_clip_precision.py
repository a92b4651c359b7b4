"""`--precision` and `--int8` for the CLIP methods: the CLIP forwards really change, the maps stay within a stated tolerance.

Every method runs on the tiny random demo CLIP loaded through the real loader, its learned parts drawn at
random under a fixed seed (the builders of tests/test_clip_batching.py), once at fp32 and once at bf16 or
with int8 encoders. Random weights: the tolerances are what these models show, not a promise for real ones.
"""
import sys as _sys, pathlib as _pathlib; _sys.path.insert(0, str(_pathlib.Path(__file__).parent))
import numpy as np
import pytest
import torch
from PIL import Image

import test_clip_batching as batching
from iapas.backends.clip import ClipBackbone
from iapas.cli import main
from iapas.errors import ConfigError

BF16_MEAN_ABS = 0.02  # mean |bf16 map - fp32 map| per image (the IAP-AS pipeline's bf16 bound); measured at most 0.0094 (AdaCLIP)
BF16_SCORE = 0.05  # |bf16 image score - fp32|; measured at most 0.027 (AdaCLIP's HSF score)
INT8_MEAN_ABS = 0.05  # mean |int8 map - fp32 map| per image (the IAP-AS pipeline's int8 bound); measured at most 0.030 (AdaCLIP)
INT8_SCORE = 0.1  # |int8 image score - fp32|; measured at most 0.056 (GenCLIP's top-n score)
IMAGES = [batching.picture(seed, shape) for seed, shape in enumerate(batching.SHAPES)]


def run(name, clip_dir, monkeypatch, make_backbone):
    """`name` built on the backbone `make_backbone(clip_dir)` gives, run on IMAGES as one batch."""
    monkeypatch.setattr(batching, "ClipBackbone", make_backbone)
    model = batching.METHODS[name][0](clip_dir)
    monkeypatch.setattr(batching, "ClipBackbone", ClipBackbone)
    return model, model.segment_outcomes(IMAGES, 3)


def linear_output_dtypes(model):
    """Hooks recording the dtype of every vision-encoder MLP output (the CLIP forward's arithmetic)."""
    seen = []
    hooks = [layer.mlp.fc1.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
             for layer in model.backbone.clip.vision_model.encoder.layers]
    return seen, hooks


def finish_inputs(model):
    """Record the dtypes of every tensor `finish` receives (the post-processing's inputs)."""
    seen = []
    finish = model.finish

    def recording(image, encoded, timings):
        stack = [encoded]
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                seen.append(item.dtype)
            elif isinstance(item, (tuple, list)):
                stack.extend(item)
            elif hasattr(item, "__dataclass_fields__"):
                stack.extend(getattr(item, name) for name in item.__dataclass_fields__)
        return finish(image, encoded, timings)

    model.finish = recording
    return seen


def differences(results, references):
    maps = [float(np.abs(r.anomaly_map - f.anomaly_map).mean()) for r, f in zip(results, references)]
    largest = max(float(np.abs(r.anomaly_map - f.anomaly_map).max()) for r, f in zip(results, references))
    scores = [abs(r.image_score - f.image_score) for r, f in zip(results, references)]
    return maps, largest, scores


@pytest.mark.parametrize("name", sorted(batching.METHODS))
def test_bf16_runs_the_clip_forwards_in_bf16_and_keeps_the_maps_within_tolerance(clip_dir, monkeypatch, name):
    _, references = run(name, clip_dir, monkeypatch, ClipBackbone)
    model, _ = run(name, clip_dir, monkeypatch, lambda path: ClipBackbone(path, "cpu", "bf16"))
    dtypes, hooks = linear_output_dtypes(model)
    received = finish_inputs(model)
    try:
        results = model.segment_outcomes(IMAGES, 3)
    finally:
        for hook in hooks:
            hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the CLIP's matmuls ran in bf16
    assert received and all(dtype in (torch.float32, torch.int64, torch.bool) for dtype in received)  # post-processing in float32
    maps, largest, scores = differences(results, references)
    assert all(result.anomaly_map.dtype == np.float32 for result in results)
    assert max(maps) < BF16_MEAN_ABS and max(scores) < BF16_SCORE
    assert largest > 1e-6  # bf16 changed the maps: not a no-op


@pytest.mark.parametrize("name", sorted(batching.METHODS))
def test_int8_quantises_the_clip_encoders_and_keeps_the_maps_within_tolerance(clip_dir, monkeypatch, name):
    _, references = run(name, clip_dir, monkeypatch, ClipBackbone)
    model, results = run(name, clip_dir, monkeypatch, lambda path: ClipBackbone(path).quantise_encoders())
    clip = model.backbone.clip
    for encoder in (clip.vision_model.encoder, clip.text_model.encoder):
        kinds = {type(module) for module in encoder.modules()}
        assert torch.ao.nn.quantized.dynamic.Linear in kinds and torch.nn.Linear not in kinds  # every encoder linear swapped
    assert type(clip.visual_projection) is torch.nn.Linear  # the projections stay float32 (GenCLIP reads their weights)
    maps, largest, scores = differences(results, references)
    assert max(maps) < INT8_MEAN_ABS and max(scores) < INT8_SCORE
    assert largest > 1e-6  # int8 changed the maps: not a no-op


def test_fp16_on_the_cpu_and_int8_with_bf16_are_refused_before_the_weights_load(tmp_path):
    missing = tmp_path / "no-clip-here"  # never opened: the refusal comes first
    with pytest.raises(ConfigError, match="^--precision fp16 needs a CUDA GPU; on cpu use fp32 \\(default\\) or bf16$"):
        ClipBackbone(missing, "cpu", "fp16")
    from iapas.backends.clip import configured_backbone
    from iapas.config import Config

    config = Config().updated({"device": "cpu", "clip_methods.precision": "bf16", "masking.int8": True})
    with pytest.raises(ConfigError, match="^--int8 and --precision bf16 exclude each other"):
        configured_backbone(missing, config)


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "part.png"
    Image.fromarray(batching.picture(5, (60, 80, 3))).save(path)
    return path


def segment(image_file, out, weights_dir, *extra):
    return main(["segment", str(image_file), "-o", str(out), "--weights", str(weights_dir), "--no-progress",
                 "--device", "cpu", *extra])


def test_cli_precision_and_int8_reach_a_clip_method_and_fp16_is_refused_as_for_iapas(capsys, weights_dir, image_file, tmp_path):
    maps = {}
    for name, extra in (("fp32", []), ("bf16", ["--precision", "bf16"]), ("int8", ["--int8"])):
        assert segment(image_file, tmp_path / name, weights_dir, "--method", "winclip", *extra) == 0
        maps[name] = np.load(tmp_path / name / "part.png.npy")
    capsys.readouterr()
    for name, bound in (("bf16", BF16_MEAN_ABS), ("int8", INT8_MEAN_ABS)):
        difference = np.abs(maps[name] - maps["fp32"])
        assert difference.mean() < bound and difference.max() > 1e-6  # the option did something, within its tolerance

    assert segment(image_file, tmp_path / "iapas-fp16", weights_dir, "--precision", "fp16") == 2
    iapas_line = [line for line in capsys.readouterr().err.splitlines() if line.startswith("iapas:")]  # after its models load
    assert segment(image_file, tmp_path / "winclip-fp16", weights_dir, "--method", "winclip", "--precision", "fp16") == 2
    assert capsys.readouterr().err.splitlines() == iapas_line == [  # one line, before the CLIP loads (no random-weights note)
        "iapas: error: --precision fp16 needs a CUDA GPU; on cpu use fp32 (default) or bf16"]
    for method in ("winclip", "iapas"):  # int8 layers fail on bf16 activations: refused before any model loads, for IAP-AS too
        assert segment(image_file, tmp_path / f"both-{method}", weights_dir, "--method", method, "--int8", "--precision", "bf16") == 2
        assert capsys.readouterr().err.splitlines() == [
            "iapas: error: --int8 and --precision bf16 exclude each other (int8 layers take float32 inputs): drop one"]


def test_train_refuses_int8_rather_than_ignoring_it(capsys, tmp_path):
    argv = ["train", "anomalyclip", "--dataset", "mvtec", "--root", str(tmp_path / "aux"), "-o", str(tmp_path / "ckpt"), "--int8"]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "iapas: error: --int8 is for inference (segment, eval, bench, serve): training back-propagates through the CLIP "
        "to the prompts, and int8 layers pass no gradient back; drop --int8"]
