"""Batched inference, mixed precision and the overlapped batch runner: equal to the one-by-one path, or within stated bounds.

Tolerances (measured on the demo models, CPU, then stated here):
- batched vs one by one: phrases exactly equal, box corners within 1e-4 px, scores and maps within 1e-5
  (the batched matmuls round differently; measured: 2e-6 px and 5e-7), masks equal but for at most
  1e-5 of their pixels: SAM's fused attention (iapas/backends/sam_attention.py) rounds differently in a
  batch, which can flip a pixel whose logit is within rounding of 0 (measured: 1 pixel in 294912).
- bf16 autocast vs fp32: the map's mean absolute difference below 0.02 (measured up to 0.007), at most
  2 boxes more or fewer (a score crossing the box threshold; measured 1), and fp32's boxes matched by a
  bf16 box at mean best IoU above 0.9 (measured 0.96 to 1.0).
"""
from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from iapas import Pipeline
from iapas.backends.base import load_segmenter
from iapas.runs.batch import run_batch
from iapas.runs.claims import CLAIM_SUFFIX
from iapas.cli import main
from iapas.cli.segment import PipelineCall
from iapas.config import Config, build_config
from iapas.errors import ConfigError
from iapas.stages.graph import GraphRun, StageGraph
from iapas.images import collect_inputs
from iapas.runs.outputs import write_result
from iapas.acceleration.precision import autocast
from iapas.types import Boxes, Masks, Result

SCORE_TOLERANCE = 1e-5  # batched vs one by one
BOX_TOLERANCE_PX = 1e-4
BF16_MAP_MEAN_ABS = 0.02
BF16_BOX_COUNT_DIFFERENCE = 2
BF16_MEAN_BEST_IOU = 0.9


def images_of_sizes(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]


MIXED = ((96, 128), (96, 128), (72, 104), (96, 128), (128, 96))  # three sizes, one of them three times


MASK_PIXEL_SHARE = 1e-5  # borderline pixels (see the module docstring)


def assert_same_results(one: list[Result], many: list[Result]) -> None:
    assert len(one) == len(many) and any(len(a.boxes) for a in one)  # something to compare
    for a, b in zip(one, many):
        assert len(a.boxes) == len(b.boxes)
        np.testing.assert_allclose(a.boxes.xyxy, b.boxes.xyxy, atol=BOX_TOLERANCE_PX, rtol=0)
        np.testing.assert_allclose(a.boxes.scores, b.boxes.scores, atol=SCORE_TOLERANCE, rtol=0)
        assert a.boxes.phrases == b.boxes.phrases and a.prompts == b.prompts
        assert a.masks.data.shape == b.masks.data.shape
        assert (a.masks.data != b.masks.data).sum() <= MASK_PIXEL_SHARE * a.masks.data.size
        flipped = a.masks.data != b.masks.data  # a flipped pixel moves the map by its box's score there
        np.testing.assert_allclose(a.anomaly_map[~flipped.any(0)], b.anomaly_map[~flipped.any(0)], atol=SCORE_TOLERANCE, rtol=0)
        assert list(a.timings) == list(b.timings)


class Passes:
    """Counts the real forward passes of a module (a pre-hook on a submodule the replayed path never reaches)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.handle = module.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))


def test_segment_many_equals_one_by_one_with_one_pass_per_size(pipeline):
    images = images_of_sizes(*MIXED)
    one = [pipeline.segment(image) for image in images]
    backbone_before = pipeline.detector.backbone_runs
    sam_passes = Passes(pipeline.segmenter.predictor.model.image_encoder.blocks[0])
    try:
        many = pipeline.segment_many(images, batch_size=5)
    finally:
        sam_passes.handle.remove()
    assert_same_results(one, many)
    assert pipeline.detector.backbone_runs - backbone_before == 3  # one per distinct size, nothing padded
    assert sam_passes.count == 1  # every image with boxes in one encoder forward
    # a batch size that does not divide the images, and the config's default of one
    assert_same_results(one, pipeline.segment_many(images, batch_size=2))
    assert_same_results(one, pipeline.segment_many(images))


def test_transformers_sam_encodes_the_batch_in_one_forward(weights_dir, hf_sam_dir):
    config = Config().updated({"weights_dir": str(weights_dir)})
    base = Pipeline.from_config(config)
    pipeline = Pipeline(config, base.detector, load_segmenter("hf-sam", hf_sam_dir, torch.device("cpu")))
    images = images_of_sizes((96, 128), (96, 128), (72, 104), seed=3)
    one = [pipeline.segment(image) for image in images]
    passes = Passes(pipeline.segmenter.model.vision_encoder.layers[0])
    try:
        many = pipeline.segment_many(images, batch_size=3)
    finally:
        passes.handle.remove()
    assert_same_results(one, many)
    assert passes.count == 1


def test_the_official_size_rule_reuses_the_batch_features(weights_dir):
    config = build_config("official").updated({"weights_dir": str(weights_dir), "calibration.tags": ["object"]})
    pipeline = Pipeline.from_config(config)
    images = images_of_sizes((96, 128), (96, 128), (96, 128), seed=4)
    one = [pipeline.segment(image) for image in images]
    before = pipeline.detector.backbone_runs
    many = pipeline.segment_many(images, batch_size=3)
    assert_same_results(one, many)
    # one pass for the batch: the object tag's question on each image reuses its row of the batch's features
    assert pipeline.detector.backbone_runs - before == 1


def test_padding_would_change_grounding_dino_so_sizes_are_never_mixed(pipeline):
    """Why detect_captions_batch stacks only equal-size images: transformers pads mixed sizes and the boxes move."""
    detector = pipeline.detector
    small, large = images_of_sizes((96, 128), (128, 96), seed=1)
    padded = detector.processor.image_processor(images=[Image.fromarray(small), Image.fromarray(large)], return_tensors="pt")
    assert not bool(padded["pixel_mask"][0].all())  # the 96-row image was padded
    text = detector.processor.tokenizer("abnormal . defect .", return_tensors="pt")
    with torch.inference_mode():
        together = detector.model(**padded, **{key: value.repeat(2, 1) for key, value in text.items()})
        alone = detector.model(**detector.processor.image_processor(images=Image.fromarray(small), return_tensors="pt"), **text)
    assert (together.pred_boxes[0] - alone.pred_boxes[0]).abs().max() > 1e-2
    found = detector.detect_captions_batch([small, large], ["abnormal . defect ."], 0.2, 0.2)
    assert [len(b) for b in found] == [len(detector.detect_captions(im, ["abnormal . defect ."], 0.2, 0.2))
                                       for im in (small, large)]


def test_detect_batch_matches_detect(pipeline):
    images = images_of_sizes((96, 128), (96, 128), seed=2)
    batched = pipeline.detector.detect_batch(images, ["abnormal", "defect"], 0.2, 0.2)
    for image, boxes in zip(images, batched):
        single = pipeline.detector.detect(image, ["abnormal", "defect"], 0.2, 0.2)
        np.testing.assert_allclose(single.xyxy, boxes.xyxy, atol=BOX_TOLERANCE_PX, rtol=0)
        assert single.phrases == boxes.phrases


# --- the graph's batched run -------------------------------------------------------------------------

class Double:
    name, inputs, outputs = "double", ("x",), ("y",)

    def __init__(self) -> None:
        self.batches = 0

    def run(self, x):
        if x < 0:
            raise ValueError(f"negative {x}")
        return {"y": 2 * x}

    def run_batch(self, items):
        self.batches += 1
        return [self.run(**item) for item in items]


class AddOne:
    name, inputs, outputs = "add", ("y",), ("z",)

    def run(self, y):
        if y == 6:
            raise RuntimeError("six")
        return {"z": y + 1}


def test_graph_run_batch_equals_run_and_isolates_failures():
    double = Double()
    graph = StageGraph([double, AddOne()], provided=("x",))
    outcomes = graph.run_batch([{"x": 1}, {"x": -1}, {"x": 3}, {"x": 5}, {}])
    assert double.batches == 1  # tried together, then one by one after the negative one raised
    assert outcomes[0].context["z"] == graph.run({"x": 1}).context["z"] == 3
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "negative -1"
    assert isinstance(outcomes[2], RuntimeError) and str(outcomes[2]) == "six"
    assert isinstance(outcomes[3], GraphRun) and outcomes[3].context["z"] == 11
    assert isinstance(outcomes[4], ConfigError) and "missing inputs ['x']" in str(outcomes[4])
    assert set(outcomes[0].timings) == {"double", "add"}
    assert graph.run_batch([{"x": 2}, {"x": 4}])[1].context["z"] == 9 and double.batches == 2


# --- precision ---------------------------------------------------------------------------------------

def test_bf16_autocast_stays_within_the_stated_tolerance_of_fp32(pipeline):
    assert Config().precision == "fp32" and build_config("official").precision == "fp32"
    assert isinstance(autocast("fp32", torch.device("cpu")), type(autocast("fp32", torch.device("cpu"))))
    with autocast("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")  # fp32 is the reference path: no autocast at all
    bf16 = Pipeline(pipeline.config.updated({"precision": "bf16"}), pipeline.detector, pipeline.segmenter)
    for image in images_of_sizes((96, 128), (96, 128), (96, 128), seed=0):
        reference, low = pipeline.segment(image), bf16.segment(image)
        assert not np.array_equal(reference.anomaly_map, low.anomaly_map)  # bf16 did run
        assert np.abs(reference.anomaly_map - low.anomaly_map).mean() < BF16_MAP_MEAN_ABS
        assert abs(len(reference.boxes) - len(low.boxes)) <= BF16_BOX_COUNT_DIFFERENCE
        iou = box_iou(torch.tensor(reference.boxes.xyxy), torch.tensor(low.boxes.xyxy))
        assert iou.max(dim=1).values.mean() > BF16_MEAN_BEST_IOU
        assert low.anomaly_map.dtype == np.float32 and low.masks.data.dtype == bool


def test_precision_is_checked_in_one_line(capsys, weights_dir, tmp_path):
    with pytest.raises(ConfigError, match="--precision fp16 needs a CUDA GPU; on cpu use fp32 .default. or bf16"):
        autocast("fp16", torch.device("cpu"))
    image = tmp_path / "x.png"
    Image.fromarray(images_of_sizes((32, 32))[0]).save(image)
    code = main(["segment", str(image), "-o", str(tmp_path / "out"), "--weights", str(weights_dir), "--device", "cpu",
                 "--precision", "fp16", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1] == ("iapas: error: --precision fp16 needs a CUDA GPU; "
                                                         "on cpu use fp32 (default) or bf16")
    with pytest.raises(SystemExit):
        main(["segment", str(image), "--batch-size", "0"])
    assert "argument --batch-size: must be a whole number of at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, auto, got 'fp8'"):
        Config().updated({"precision": "fp8"})


# --- the overlapped batch runner ---------------------------------------------------------------------

def outputs_of(folder: Path) -> dict[str, object]:
    """Every result file's content, the JSON without its timings (wall times differ from run to run)."""
    files: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name == "summary.csv":  # thumbnails, and the run's rows in completion order with times
            continue
        if path.suffix == ".json" and path.name != "iapas-fingerprint.json":
            record = json.loads(path.read_text())
            record.pop("timings_s")
            files[path.name] = record
        else:
            files[path.name] = path.read_bytes()
    return files


@pytest.fixture
def many_images(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for index, shape in enumerate(MIXED):
        Image.fromarray(images_of_sizes(shape, seed=10 + index)[0]).save(folder / f"i{index}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def assert_same_record(mine: dict, theirs: dict) -> None:
    """Two result records equal but for the last bits of their boxes (BOX_TOLERANCE_PX) and scores (SCORE_TOLERANCE)."""
    assert {k: v for k, v in mine.items() if k not in ("boxes", "image_score")} == \
        {k: v for k, v in theirs.items() if k not in ("boxes", "image_score")}
    assert mine["image_score"] == pytest.approx(theirs["image_score"], abs=SCORE_TOLERANCE)
    assert [(b["phrase"], b["mask_area"]) for b in mine["boxes"]] == [(b["phrase"], b["mask_area"]) for b in theirs["boxes"]]
    if mine["boxes"]:
        np.testing.assert_allclose([b["xyxy"] for b in mine["boxes"]], [b["xyxy"] for b in theirs["boxes"]], atol=BOX_TOLERANCE_PX, rtol=0)
        np.testing.assert_allclose([b["score"] for b in mine["boxes"]], [b["score"] for b in theirs["boxes"]],
                                   atol=SCORE_TOLERANCE, rtol=0)


def test_threads_and_batches_write_the_same_files_as_a_serial_run(pipeline, many_images, tmp_path):
    inputs = collect_inputs([many_images], report=None)
    segment = PipelineCall(pipeline, {})
    runs = {}
    for label, batch_size, overlap in (("serial", 1, False), ("threads", 1, True), ("batched", 3, True)):
        reported: list[str] = []
        summary = run_batch(segment, inputs, tmp_path / label, progress=False, report=reported.append,
                            batch_size=batch_size, overlap=overlap)
        assert (summary.segmented, len(summary.failures), summary.skipped) == (5, 1, 0)
        assert reported == [f"iapas: error: not an image file (or an unsupported format): {many_images / 'broken.png'}"]
        assert not list((tmp_path / label).glob(f"*{CLAIM_SUFFIX}"))  # every claim released
        runs[label] = outputs_of(tmp_path / label)
    assert runs["threads"] == runs["serial"]
    for label in ("batched",):  # the maps' floats may differ in their last bits (SCORE_TOLERANCE)
        assert runs[label].keys() == runs["serial"].keys()
        for name, content in runs["serial"].items():
            mine, theirs = tmp_path / label / name, tmp_path / "serial" / name
            if name.endswith(".npy"):
                np.testing.assert_allclose(np.load(mine), np.load(theirs), atol=SCORE_TOLERANCE, rtol=0)
            elif name.endswith(".png"):  # 8-bit renderings of those maps: one grey level at most
                difference = np.asarray(Image.open(mine), np.int16) - np.asarray(Image.open(theirs), np.int16)
                assert np.abs(difference).max() <= 1
            elif name.endswith(".json"):  # full-precision boxes and scores: the batched floats within the stated tolerance
                assert_same_record(runs[label][name], content)
            else:
                assert runs[label][name] == content
    resumed = run_batch(segment, inputs, tmp_path / "batched", progress=False, report=lambda m: None, batch_size=3)
    assert (resumed.segmented, resumed.skipped, len(resumed.failures)) == (0, 5, 1)


def mean_map(pixels):
    heat = 1.0 - pixels.mean(axis=2).astype(np.float32) / 255
    return Result(heat, Boxes.empty(), Masks.empty(*heat.shape), ())


@pytest.mark.parametrize("overlap", [True, False])
def test_a_writer_exception_is_one_line_and_the_batch_goes_on(many_images, tmp_path, overlap):
    inputs = collect_inputs([many_images], report=None)
    bad = inputs[2][0]

    def writer(out_dir, name, pixels, image, result, record):
        if image == bad:
            raise RuntimeError("encoder exploded\nsecond line")
        if image == inputs[4][0]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return write_result(out_dir, name, pixels, image, result, record)

    reported: list[str] = []
    out = tmp_path / "out"
    summary = run_batch(mean_map, inputs, out, progress=False, report=reported.append, writer=writer, batch_size=2,
                        overlap=overlap)
    assert summary.segmented == 3 and not summary.stopped
    assert reported == [
        f"iapas: error: not an image file (or an unsupported format): {many_images / 'broken.png'}",
        f"iapas: error: cannot write the results of {bad} to {out}: cannot segment {bad}: RuntimeError: encoder exploded",
        f"iapas: error: cannot write the results of {inputs[4][0]} to {out}: Permission denied",
    ]
    assert not list(out.glob(f"*{CLAIM_SUFFIX}"))


def test_a_full_disk_stops_the_threaded_batch_with_one_line(many_images, tmp_path):
    inputs = collect_inputs([many_images], report=None)
    written: list[str] = []

    def filling(out_dir, name, *rest):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(name)
        return write_result(out_dir, name, *rest)

    reported: list[str] = []
    out = tmp_path / "out"
    summary = run_batch(mean_map, inputs, out, progress=False, report=reported.append, writer=filling, batch_size=2)
    assert summary.stopped and summary.segmented == 1
    assert [line for line in reported if "No space" in line] == [
        f"iapas: error: cannot write results to {out}: No space left on device (ENOSPC); "
        f"stopped after 1 of {len(inputs)} images, finished results are kept"]
    assert not list(out.glob(f"*{CLAIM_SUFFIX}"))  # the prefetched images' claims were released too


def test_segment_and_bench_take_a_batch_size(capsys, weights_dir, many_images, tmp_path):
    out = tmp_path / "out"
    argv = ["segment", str(many_images), "-o", str(out), "--weights", str(weights_dir), "--no-progress"]
    assert main(argv + ["--batch-size", "3"]) == 1  # broken.png fails, the others are written
    assert "5 segmented" in capsys.readouterr().err
    assert main(argv) == 1  # the batch size does not define results: a one-by-one run resumes the batched one
    assert "0 segmented, 5 skipped" in capsys.readouterr().err
    report_path = tmp_path / "bench.json"
    assert main(["bench", "--images", "3", "--size", "96", "--warmup", "0", "--batch-size", "2", "--weights",
                 str(weights_dir), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["batch_size"] == 2 and report["batched"] and report["iapas"]["images"] == 3
    assert "batch size 2" in capsys.readouterr().out


def test_reading_and_writing_overlap_the_model(monkeypatch, many_images, tmp_path):
    """The reader decodes ahead while the model works, and the model goes on while a write is under way."""
    import iapas.runs.batch

    inputs = [item for item in collect_inputs([many_images], report=None) if item[0].name != "broken.png"]
    second_read, second_segmented = threading.Event(), threading.Event()
    real_load = iapas.runs.batch.load_image
    seen: list[str] = []

    def load(path, *rest):
        if path == inputs[1][0]:
            second_read.set()
        return real_load(path, *rest)

    def segment(pixels):
        seen.append("segment")
        if len(seen) == 1:  # the first image: the reader has already decoded the second one meanwhile
            seen.append(f"second read while segmenting: {second_read.wait(30)}")
        else:
            second_segmented.set()
        return mean_map(pixels)

    def writer(out_dir, name, *rest):
        if name == "i0.png":  # the first write waits for the model to finish the next image
            seen.append(f"second segmented while writing: {second_segmented.wait(30)}")
        return write_result(out_dir, name, *rest)

    monkeypatch.setattr(iapas.runs.batch, "load_image", load)
    summary = run_batch(segment, inputs, tmp_path / "out", progress=False, writer=writer)
    assert summary.segmented == len(inputs)
    assert "second read while segmenting: True" in seen and "second segmented while writing: True" in seen


def test_auto_precision_is_bf16_only_where_the_device_has_it(monkeypatch):
    from iapas.acceleration.precision import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": False})
    assert resolve_precision("auto", cpu) == "bf16"
    context = autocast("auto", cpu)
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx2": True})
    assert resolve_precision("auto", cpu) == "fp32" and not isinstance(autocast("auto", cpu), torch.autocast)
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")):  # T4 emulates bf16; A100, H100 have it
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", torch.device("cuda")) == expected
    # the fast profiles and the iapas recipe (the default) ask for it; official and a bare Config stay fp32, the reference
    assert {build_config(profile=name).precision for name in ("fast", "fast-edgetam", "fast-omdet")} == {"auto"}
    assert build_config().precision == "auto" and build_config("official").precision == Config().precision == "fp32"
