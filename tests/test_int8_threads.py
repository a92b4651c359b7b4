"""int8 dynamic quantisation (`--int8`) reaches the models and keeps the maps close; `--threads` and its auto rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from iapas import Pipeline
from iapas.cli import build_parser, main
from iapas.cli.common import base_config
from iapas.config import Config, config_from_dict
from iapas.errors import ConfigError, ValueRangeError
from iapas.acceleration.quantisation import quantise_backend
from iapas.acceleration import threads as threads_module

# Stated tolerance of int8 against float32, measured on the random demo models (real weights were not
# available offline): the anomaly map's mean absolute difference and SAM's mask IoU on fixed boxes.
INT8_MAP_MEAN_ABS = 0.05
INT8_MASK_IOU = 0.97


def quantised(module: torch.nn.Module) -> int:
    return sum(isinstance(layer, DynamicLinear) for layer in module.modules())


@pytest.fixture(scope="module")
def int8_pipeline(weights_dir):
    return Pipeline.from_pretrained(weights_dir, Config().updated({"detection.int8": True, "masking.int8": True}))


def test_int8_reaches_the_encoders(int8_pipeline, pipeline):
    sam = int8_pipeline.segmenter.predictor.model
    assert quantised(sam.image_encoder) == sum(isinstance(m, torch.nn.Linear) for m in
                                               pipeline.segmenter.predictor.model.image_encoder.modules()) > 0
    assert quantised(sam.mask_decoder) == 0  # the decoder stays float32
    assert quantised(int8_pipeline.detector.model) > 0
    assert quantised(pipeline.detector.model) == quantised(pipeline.segmenter.predictor.model) == 0


def test_int8_flag_sets_both_models():
    args = build_parser().parse_args(["segment", "x.png", "--int8"])
    config = base_config(args)
    assert config.detection.int8 and config.masking.int8
    plain = base_config(build_parser().parse_args(["segment", "x.png"]))
    assert not plain.detection.int8 and not plain.masking.int8
    # a fast profile's auto precision yields to --int8 (on the command line or in a config file); an explicit
    # --precision bf16 beside it stays, to be refused when the models load
    from iapas.config import build_config

    assert build_config(data={"detection": {"int8": True}}, profile="fast").precision == "fp32"
    assert base_config(build_parser().parse_args(["segment", "x.png", "--profile", "fast", "--int8"])).precision == "fp32"
    explicit = build_parser().parse_args(["segment", "x.png", "--profile", "fast", "--int8", "--precision", "bf16"])
    assert base_config(explicit).precision == "bf16"


def test_int8_maps_stay_within_tolerance(int8_pipeline, pipeline):
    rng = np.random.default_rng(0)
    differences, ious = [], []
    xyxy = np.array([[10, 10, 60, 60], [30, 20, 120, 90]], np.float32)
    for _ in range(3):
        image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        differences.append(np.abs(pipeline.segment(image).anomaly_map - int8_pipeline.segment(image).anomaly_map).mean())
        full, low = pipeline.segmenter.segment_boxes(image, xyxy), int8_pipeline.segmenter.segment_boxes(image, xyxy)
        ious.extend((full & low).sum((1, 2)) / np.maximum((full | low).sum((1, 2)), 1))
    assert max(differences) < INT8_MAP_MEAN_ABS
    assert min(ious) >= INT8_MASK_IOU


def test_int8_refuses_a_gpu(pipeline):
    with pytest.raises(ConfigError, match="masking.int8 runs on the CPU only"):
        quantise_backend(pipeline.segmenter, "masking", torch.device("cuda"))
    with pytest.raises(ConfigError, match="has no int8 path"):
        quantise_backend(object(), "detection", torch.device("cpu"))


def record_thread_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: calls[-1] if calls else 99)
    return calls


def test_threads_auto_rule(monkeypatch):
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_module.wanted_threads(0) == 3  # the CPUs this process may use
    assert threads_module.wanted_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_module.wanted_threads(0) is None  # the user's OMP_NUM_THREADS stands
    assert threads_module.wanted_threads(4) == 4  # an explicit --threads wins


def test_cli_applies_threads_and_the_library_only_when_asked(monkeypatch, weights_dir):
    from iapas.methods.iapas import pipeline as pipeline_module

    # the thread rule runs before any model loads; stand-ins keep the test from loading models twice
    monkeypatch.setattr(pipeline_module, "load_detector", lambda *args: object())
    monkeypatch.setattr(pipeline_module, "load_segmenter", lambda *args: object())
    calls = record_thread_calls(monkeypatch)
    base_config(build_parser().parse_args(["segment", "x.png", "--threads", "3"]))
    assert calls == [3]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "usable_cpus", lambda: 5)
    base_config(build_parser().parse_args(["segment", "x.png"]))
    assert calls == [3, 5]
    Pipeline.from_pretrained(weights_dir)  # threads 0: a library user's process is left alone
    assert calls == [3, 5]
    Pipeline.from_pretrained(weights_dir, Config().updated({"threads": 2}))
    assert calls == [3, 5, 2]


def test_threads_range_is_checked(capsys):
    with pytest.raises(ValueRangeError, match="threads must be 0"):
        config_from_dict({"threads": -1})
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x.png", "--threads", "-2"])
    assert exit_info.value.code == 2 and "must be 0 or more" in capsys.readouterr().err
