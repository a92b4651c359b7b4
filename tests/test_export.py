"""Exported image encoders (iapas/runtimes): agreement with torch on the tiny demo models, and the one-line errors.

Tolerances, stated once: an exported encoder's output may differ from torch's by float32 rounding only,
at most EMBEDDING_TOLERANCE relative to the largest embedding value (ONNX Runtime and OpenVINO alike, both
at fp32). A full `segment` run's anomaly maps agree within MAP_TOLERANCE; SAM masks are identical except
at borderline pixels, whose torch mask logit lies within LOGIT_BORDER of SAM's threshold 0.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iapas.backends import load_detector, load_segmenter
from iapas.acceleration.runtimes import FORMATS, export_backend, locations, parts_of, use_runtime
from cli_runner import error_lines, run

EMBEDDING_TOLERANCE = 1e-4
MAP_TOLERANCE = 1e-4
LOGIT_BORDER = 1e-3
RUNTIMES = ("onnx", "openvino")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights(weights_dir, tmp_path_factory) -> Path:
    """A private copy of the demo weights: exports land beside them, so the shared folder stays as it was."""
    return Path(shutil.copytree(weights_dir, tmp_path_factory.mktemp("export") / "weights"))


@pytest.fixture(scope="module")
def sam_file(weights) -> Path:
    return weights / "demo" / "sam_demo.pth"


@pytest.fixture(scope="module")
def detector_dir(weights) -> Path:
    return weights / "demo" / "grounding-dino-demo"




def image(seed: int = 0, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def embeddings(module: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = module(pixels)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("backend", ["sam", "hf-sam"])
def test_exported_sam_encoder_matches_torch(runtime, backend, sam_file, hf_sam_dir, tmp_path):
    path = sam_file if backend == "sam" else hf_sam_dir
    segmenter = load_segmenter(backend, path, CPU)
    (part,) = parts_of(segmenter)
    (file,) = export_backend(segmenter, runtime, path, tmp_path)
    shapes = part.shapes(segmenter, 0)
    assert shapes == ((1, 3, 256, 256),) and file.name.endswith(f".256x256{FORMATS.get(runtime).suffix}")
    runner = FORMATS.get(runtime).load(file, part.signature(segmenter, shapes), CPU)
    pixels = torch.randn(shapes[0], generator=torch.Generator().manual_seed(3))  # not the traced example
    expected = embeddings(part.module(segmenter), pixels).numpy()
    got = runner([pixels.numpy()])[0]
    scale = np.abs(expected).max()
    assert got.shape == expected.shape and scale > 0
    assert np.abs(got - expected).max() <= EMBEDDING_TOLERANCE * max(scale, 1.0)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sam_masks_differ_only_at_borderline_pixels(runtime, sam_file):
    reference = load_segmenter("sam", sam_file, CPU)
    exported = use_runtime(load_segmenter("sam", sam_file, CPU), runtime, sam_file, CPU)
    pixels = image(1)
    boxes = np.array([[5, 5, 70, 60], [40, 20, 125, 90], [0, 0, 128, 96]], np.float32)

    def logits(segmenter) -> np.ndarray:
        predictor = segmenter.predictor
        predictor.set_image(pixels)
        transformed = predictor.transform.apply_boxes_torch(torch.tensor(boxes), pixels.shape[:2])
        with torch.no_grad():
            out, _, _ = predictor.predict_torch(None, None, boxes=transformed, multimask_output=False, return_logits=True)
        return out[:, 0].numpy()

    expected, got = logits(reference), logits(exported)
    assert np.abs(got - expected).max() < LOGIT_BORDER
    differ = (got > 0) != (expected > 0)
    assert np.all(np.abs(expected[differ]) < LOGIT_BORDER)  # only borderline pixels may flip
    masks_reference, masks_exported = reference.segment_boxes(pixels, boxes), exported.segment_boxes(pixels, boxes)
    assert masks_reference.any() and np.array_equal(masks_reference != masks_exported, differ)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exported_grounding_dino_backbone_gives_the_same_boxes(runtime, detector_dir):
    reference = load_detector("hf-grounding-dino", detector_dir, CPU)
    exported = use_runtime(load_detector("hf-grounding-dino", detector_dir, CPU), runtime, detector_dir, CPU)
    pixels = image(2)
    expected = reference.detect(pixels, ["scratch", "hole"], 0.0, 0.0)
    got = exported.detect(pixels, ["scratch", "hole"], 0.0, 0.0)
    assert len(expected) > 0 and len(got) == len(expected)
    assert np.abs(got.scores - expected.scores).max() < EMBEDDING_TOLERANCE
    assert np.abs(got.xyxy - expected.xyxy).max() < 1e-2  # pixels
    assert got.phrases == expected.phrases


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_segment_with_runtime_matches_torch(runtime, capsys, weights, tmp_path):
    from conftest import write_rgb

    inputs = tmp_path / "images"
    inputs.mkdir()
    for seed in range(2):
        write_rgb(inputs / f"{seed}.png", seed=seed)
    maps = {}
    for name in ("torch", runtime):
        out = tmp_path / name
        code, _, err = run(capsys, "segment", inputs, "-o", out, "--weights", weights, "--runtime", name, "--no-progress",
                           "--precision", "fp32")  # the exports run fp32: compare at fp32 (auto is bf16 on a bf16 CPU)
        assert code == 0, err
        maps[name] = [np.load(out / f"{seed}.png.npy") for seed in range(2)]
    for expected, got in zip(maps["torch"], maps[runtime]):
        assert expected.shape == got.shape and expected.max() > 0
        assert np.abs(expected - got).max() < MAP_TOLERANCE


def test_runtime_exports_on_first_use_then_reuses_and_redoes_for_new_weights(capsys, weights_dir, tmp_path):
    sam = Path(shutil.copy(weights_dir / "demo" / "sam_demo.pth", tmp_path / "sam.pth"))
    segmenter = load_segmenter("sam", sam, CPU)
    (part,) = parts_of(segmenter)
    beside = locations(sam, part, part.shapes(segmenter, 0), FORMATS.get("onnx"))[0]
    assert beside.parent == tmp_path and not beside.exists()
    use_runtime(segmenter, "onnx", sam, CPU)
    assert "exporting sam-image-encoder" in capsys.readouterr().err and beside.is_file()
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # written through a temporary name, moved into place
    first = beside.stat().st_mtime_ns
    use_runtime(load_segmenter("sam", sam, CPU), "onnx", sam, CPU)
    assert "exporting" not in capsys.readouterr().err and beside.stat().st_mtime_ns == first
    torch.save(torch.load(sam, weights_only=True), sam)  # the weights are replaced: the export is stale
    use_runtime(load_segmenter("sam", sam, CPU), "onnx", sam, CPU)
    assert "exporting" in capsys.readouterr().err


def test_interrupted_export_leaves_no_file(monkeypatch, sam_file, tmp_path):
    segmenter = load_segmenter("sam", sam_file, CPU)

    def fail(module, args, path, **kwargs):
        Path(path).write_bytes(b"half an onnx file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(KeyboardInterrupt):
        export_backend(segmenter, "onnx", sam_file, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_runtime_option_sets_both_models_unless_the_detector_has_its_own(weights):
    from iapas.cli import build_parser
    from iapas.cli.common import base_config

    both = base_config(build_parser().parse_args(["segment", "x.png", "--runtime", "onnx"]))
    assert (both.masking.runtime, both.detection.runtime) == ("onnx", "onnx")
    split = base_config(build_parser().parse_args(["segment", "x.png", "--detector-runtime", "torch", "--runtime", "openvino"]))
    assert (split.masking.runtime, split.detection.runtime) == ("openvino", "torch")


def test_export_command_writes_files_beside_the_weights(capsys, weights, sam_file):
    code, out, err = run(capsys, "export", "--format", "onnx", "--weights", weights, "--part", "segmenter")
    assert code == 0, err
    assert out.splitlines() == [str(sam_file.with_name(sam_file.name + ".sam-image-encoder.256x256.onnx"))]


def test_unknown_format_is_one_line(capsys, weights):
    code, _, err = run(capsys, "export", "--format", "tflite", "--weights", weights)
    assert code == 2 and error_lines(err) == ["iapas: error: unknown export format 'tflite' (known: onnx, openvino)"]


def test_export_of_missing_weights_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "export", "--format", "onnx", "--part", "segmenter", "--segmenter", tmp_path / "none.pth")
    assert code == 2 and len(error_lines(err)) == 1 and "SAM weights not found" in err and "Traceback" not in err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_corrupt_exported_file_is_one_line(runtime, capsys, weights_dir, tmp_path):
    folder = Path(shutil.copytree(weights_dir, tmp_path / "weights"))
    sam = folder / "demo" / "sam_demo.pth"
    segmenter = load_segmenter("sam", sam, CPU)
    (part,) = parts_of(segmenter)
    fmt = FORMATS.get(runtime)
    beside = locations(sam, part, part.shapes(segmenter, 0), fmt)[0]
    for file in fmt.files(beside):
        file.write_bytes(b"\x08\x01garbage, not a model")
    from conftest import write_rgb

    code, _, err = run(capsys, "segment", write_rgb(tmp_path / "a.png"), "-o", tmp_path / "out", "--weights", folder,
                       "--runtime", runtime, "--detector-runtime", "torch", "--no-progress")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and f"exported model {beside} is corrupt or unreadable" in lines[0]


def test_runtime_for_a_backend_without_an_exported_encoder_is_one_line(capsys, weights, tmp_path):
    image = Path(__file__).parent.parent / "examples" / "images" / "tile_crack.png"
    code, _, err = run(capsys, "segment", image, "--weights", weights, "--profile", "fast", "--runtime", "onnx",
                       "--detector-runtime", "torch", "-o", tmp_path / "out")
    assert code == 2 and error_lines(err) == [
        "iapas: error: --runtime onnx has no exported encoder for HFSam2Family (exported parts: grounding-dino-backbone, "
        "hf-sam-vision-encoder, sam-image-encoder); use --runtime torch for it"]
