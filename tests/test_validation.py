"""Every input class a user can get wrong gives one clear line (an IapasError subclass), never a traceback."""
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from iapas.backends.llm import CachedLLM, LexiconLLM, OpenAICompatibleLLM
from iapas.calibration import Calibration, load_calibration
from iapas.cli import main
from iapas.config import Config, config_from_dict, kind_of, load_config
from iapas.errors import (
    CalibrationFileError,
    ConfigError,
    CorruptWeightsError,
    LLMError,
    MetricsInputError,
    ValueRangeError,
)
from iapas.evaluation.metrics import PixelMetrics
from iapas.weights.manifest import file_identity

from conftest import write_rgb


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("WARNING", "note:"))]
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


# ---- thresholds, counts and timeouts: CLI (argparse types) and config files -----------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--box-threshold", "1.5", "must be in [0, 1], got 1.5"),
    ("--text-threshold", "-0.1", "must be in [0, 1]"),
    ("--nms-iou", "nan", "must be in [0, 1], got nan"),
    ("--size-threshold", "abc", "not a number: 'abc'"),
])
def test_cli_thresholds_outside_unit_interval_are_refused(capsys, tmp_path, option, value, message):
    with pytest.raises(SystemExit) as stopped:
        main(["segment", str(write_rgb(tmp_path / "a.png")), "-o", str(tmp_path / "o"), option, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("option, value", [("--n-images", "0"), ("--n-images", "-2"), ("--llm-timeout", "0"),
                                           ("--llm-timeout", "nan")])
def test_cli_counts_and_timeouts_are_checked(capsys, tmp_path, option, value):
    with pytest.raises(SystemExit) as stopped:
        main(["calibrate", str(tmp_path), option, value])
    assert stopped.value.code == 2 and f"argument {option}:" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("detection:\n  box_threshold: .nan\n", "detection.box_threshold must be in [0, 1], got nan"),
    ("filtering:\n  size_threshold: 1.2\n", "filtering.size_threshold must be in [0, 1], got 1.2"),
    ("calibration:\n  n_images: 0\n", "calibration.n_images must be a whole number of at least 1, got 0"),
    ("calibration:\n  llm_timeout: -1\n", "calibration.llm_timeout must be a positive number of seconds"),
])
def test_config_file_values_out_of_range_are_one_line(capsys, tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueRangeError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_config(path)
    assert main(["config", "show", "--config", str(path)]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_json_nan_threshold_is_refused_and_valid_values_pass():
    with pytest.raises(ValueRangeError):
        config_from_dict(json.loads('{"detection": {"text_threshold": NaN}}'))
    config = config_from_dict({"detection": {"box_threshold": 0, "text_threshold": 1}, "calibration": {"llm_timeout": 3}})
    assert config.detection.box_threshold == 0.0 and config.calibration.llm_timeout == 3.0
    with pytest.raises(ValueRangeError):
        Config().updated({"filtering.nms_iou": 2.0})  # overrides go through the same check


def test_non_utf8_config_file_is_one_line(capsys, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("device: cpu  # r\xe9glage\n".encode("latin-1"))
    assert main(["config", "show", "--config", str(path)]) == 2
    assert "config file is not UTF-8 text" in one_line(capsys.readouterr().err)


# ---- calibration files: every field's type and range ---------------------------------------------------------

def calibration_dict(**changes):
    base = Calibration(tags=("washer",), llm_answer="scratch", p_adj=("scratch",), p_final=("abnormal", "scratch"),
                       size_threshold=0.5, object_size=0.5, box_threshold=0.2, text_threshold=0.2, kind="object")
    return {**base.to_dict(), **changes}


@pytest.mark.parametrize("changes, message", [
    ({"tags": "washer"}, "field 'tags' must be a list of strings"),  # never ('w', 'a', 's', ...)
    ({"p_final": ["abnormal", 3]}, "field 'p_final' must be a list of strings"),
    ({"box_threshold": float("nan")}, "field 'box_threshold' must be in \\[0, 1\\]"),
    ({"size_threshold": 1.5}, "field 'size_threshold' must be in \\[0, 1\\]"),
    ({"text_threshold": "0.2"}, "field 'text_threshold' must be a number in \\[0, 1\\]"),
    ({"object_size": -1}, "field 'object_size' must be in \\[0, 1\\]"),
    ({"kind": "blob"}, "field 'kind' must be 'object' or 'texture'"),
    ({"llm_answer": ["scratch"]}, "field 'llm_answer' must be a string"),
    ({"models": {"llm": 3}}, "field 'models' must be an object of strings"),
    ({"seed": "111"}, "field 'seed' must be a whole number"),
])
def test_calibration_file_with_wrong_types_is_one_line(capsys, tmp_path, changes, message):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(calibration_dict(**changes)))
    with pytest.raises(CalibrationFileError, match=message):
        load_calibration(path)
    assert main(["calibrate", "--show", str(path)]) == 2
    assert str(path) in one_line(capsys.readouterr().err)


def test_valid_calibration_round_trips_and_missing_fields_are_named(tmp_path):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(calibration_dict(object_size=None)))
    loaded = load_calibration(path)
    assert loaded.tags == ("washer",) and loaded.object_size is None and loaded.box_threshold == 0.2
    data = calibration_dict()
    del data["p_final"]
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationFileError, match="lacks p_final"):
        load_calibration(path)


# ---- corrupt weight files --------------------------------------------------------------------------------------

def test_corrupt_safetensors_names_the_file(capsys, weights_dir, tmp_path):
    from iapas.weights.manifest import find_weights

    detector = tmp_path / "gd"
    shutil.copytree(find_weights("detector", weights_dir)[1], detector)
    weights_file = detector / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])  # truncated, as by an interrupted copy
    code = main(["segment", str(write_rgb(tmp_path / "a.png")), "-o", str(tmp_path / "o"), "--weights", str(weights_dir),
                 "--detector", str(detector), "--no-progress"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and str(weights_file) in line and "corrupt or truncated" in line


def test_corrupt_sam_checkpoint_is_a_corrupt_weights_error(tmp_path):
    from iapas.backends import load_segmenter

    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(b"\x80\x02 truncated pickle")
    with pytest.raises(CorruptWeightsError, match="cannot read checkpoint"):
        load_segmenter("sam", path, torch.device("cpu"))


# ---- LLM answers: empty or non-text answers, cache identity, timeouts ----------------------------------------

class FixedLLM:
    def __init__(self, answer, identity="a", model_id="same-name.gguf"):
        self.answer, self.identity, self.model_id, self.calls = answer, identity, model_id, 0

    def generate(self, prompt, tags):
        self.calls += 1
        return self.answer


@pytest.mark.parametrize("answer", ["", "   \n", None, 42, ["scratch"]])
def test_empty_or_non_text_answer_warns_and_is_not_cached(tmp_path, answer):
    warnings = []
    inner = FixedLLM(answer)
    cached = CachedLLM(inner, tmp_path, warn=warnings.append)
    assert cached.generate("p", ["metal"]) == "" and cached.generate("p", ["metal"]) == ""
    assert inner.calls == 2 and not list(tmp_path.iterdir())  # asked again, nothing stored
    assert len(warnings) == 2 and "no LLM prompts are added (not cached)" in warnings[0]


def test_cache_keys_on_model_identity_not_its_name(tmp_path):
    first = CachedLLM(FixedLLM("scratch", identity="file-1"), tmp_path)
    second = CachedLLM(FixedLLM("dent", identity="file-2"), tmp_path)  # same base name, other file
    assert first.generate("p", ["metal"]) == "scratch" and second.generate("p", ["metal"]) == "dent"
    assert CachedLLM(FixedLLM("other", identity="file-1"), tmp_path).generate("p", ["metal"]) == "scratch"


def test_file_identity_tells_same_named_model_files_apart(tmp_path):
    one, two = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, content in ((one, b"1234"), (two, b"1234")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert file_identity(one) != file_identity(two)
    before = file_identity(one)
    one.write_bytes(b"12345")  # replaced in place: new size
    assert file_identity(one) != before
    assert file_identity(tmp_path / "a") != file_identity(tmp_path / "b")  # directories hash their files


def test_lexicon_identity_follows_its_content(tmp_path):
    from iapas.vocabulary import LEXICON_FILE

    edited = tmp_path / "lexicon.toml"
    edited.write_text(LEXICON_FILE.read_text(encoding="utf-8").replace('"rust", ', ""), encoding="utf-8")
    original, changed = LexiconLLM(), LexiconLLM(edited)
    assert original.model_id == changed.model_id and original.identity != changed.identity


class HangingHandler(BaseHTTPRequestHandler):
    """Accepts the request and never answers, until the test releases it (bounded: 10 s at most)."""

    release = threading.Event()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        HangingHandler.release.wait(10)

    def log_message(self, *args):
        pass


class NullContentHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = json.dumps({"choices": [{"message": {"content": None}, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def hanging_server():
    HangingHandler.release.clear()
    server = serve(HangingHandler)
    yield f"http://127.0.0.1:{server.server_port}/v1"
    HangingHandler.release.set()
    server.shutdown()
    server.server_close()


def test_hanging_endpoint_times_out_with_progress_notes(capsys, hanging_server):
    llm = OpenAICompatibleLLM(hanging_server, "m", timeout_s=0.8, progress_interval_s=0.2)
    with pytest.raises(LLMError, match=r"did not answer within 0\.8 s \(--llm-timeout"):
        llm.generate("p", ["metal"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: waiting for LLM endpoint")]
    assert len(notes) >= 2 and "of at most 0.8 s" in notes[0]


def test_cli_llm_timeout_reaches_the_endpoint(capsys, weights_dir, hanging_server, tmp_path):
    folder = tmp_path / "normal"
    folder.mkdir()
    write_rgb(folder / "a.png", 48, 48)
    code = main(["calibrate", str(folder), "--weights", str(weights_dir), "--tagger", "fixed", "--tags", "washer",
                 "--llm", "openai", "--llm-url", hanging_server, "--llm-timeout", "0.5", "--n-images", "1",
                 "--cache-dir", str(tmp_path / "c"), "-o", str(tmp_path / "calib.json")])
    err = capsys.readouterr().err
    assert code == 2 and "did not answer within 0.5 s" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "calib.json").exists()


def test_null_content_from_an_endpoint_is_not_text(tmp_path):
    server = serve(NullContentHandler)
    try:
        warnings = []
        llm = CachedLLM(OpenAICompatibleLLM(f"http://127.0.0.1:{server.server_port}", "m", timeout_s=5), tmp_path,
                        warn=warnings.append)
        assert llm.generate("p", ["metal"]) == ""  # never the string "None"
        assert "a NoneType instead of text" in warnings[0] and not list(tmp_path.iterdir())
    finally:
        server.shutdown()
        server.server_close()


# ---- metrics refuse maps they cannot bin -----------------------------------------------------------------------

def test_metrics_refuse_nan_and_out_of_range_maps_naming_the_image():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    metrics = PixelMetrics(bins=8)
    nan_map = np.full((4, 4), 0.5, np.float32)
    nan_map[1, 2] = np.nan
    with pytest.raises(MetricsInputError, match="of test/a.png holds NaN at 1 pixel"):
        metrics.update(nan_map, mask, name="test/a.png")
    with pytest.raises(MetricsInputError, match=r"of b.png has values in \[0, 1.5\], outside the metrics' range \[0, 1\]"):
        metrics.update(np.linspace(0, 1.5, 16).reshape(4, 4), mask, name="b.png")
    with pytest.raises(MetricsInputError, match="outside"):
        metrics.update(np.full((4, 4), -0.01), mask, name="c.png")
    assert metrics.positive.sum() == 0 and metrics.negative.sum() == 0  # nothing half-added
    edges = np.zeros((4, 4))
    edges[0, 0] = 1.0  # both ends of the range are fine; 1.0 falls in the last bin
    metrics.update(edges, mask)
    assert metrics.positive[-1] == 1 and metrics.negative[0] == 15


def test_eval_stops_with_one_line_naming_the_image_whose_map_is_nan(tmp_path):
    from iapas.data.synth import SynthSpec, write_synth_dataset
    from iapas.evaluation.evaluate import EvalOptions, MethodMaps, evaluate_category
    from iapas.data.datasets import load_dataset
    from iapas.types import Boxes, Masks, Result

    class NanMethod:
        name = "nan"

        def prepare(self, category, normal_images, kind, out_dir):
            pass

        def segment(self, pixels):
            anomaly_map = np.full(pixels.shape[:2], np.nan, np.float32)
            return Result(anomaly_map, Boxes.empty(), Masks.empty(*pixels.shape[:2]), ())

    root = write_synth_dataset(tmp_path / "d", SynthSpec(categories=("washer",), defects=("scratch",), train_good=1,
                                                          test_good=1, per_defect=1, size=32, seed=1))
    dataset = load_dataset("mvtec", root)
    options = EvalOptions("mvtec", root, tmp_path / "r", progress=False)
    with pytest.raises(MetricsInputError, match=r"anomaly map of .*washer/test/.*\.png holds NaN"):
        evaluate_category(MethodMaps(NanMethod(), dataset.name), dataset, "washer", options, tmp_path / "r")


# ---- one rule, written once ------------------------------------------------------------------------------------

def test_texture_rule_covers_datasets_and_categories():
    assert kind_of("tile") == "texture" and kind_of("washer") == "object"
    assert kind_of("anything", "dtd") == "texture" and kind_of("bottle", "mvtec") == "object"


def test_image_score_rules():
    from iapas.types import Boxes, Masks, Result

    anomaly_map = np.array([[0.1, 0.7]], np.float32)
    result = Result(anomaly_map, Boxes.empty(), Masks.empty(1, 2), (), image_score_value=0.3)
    assert result.score("max") == pytest.approx(0.7) and result.score("method") == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="unknown image-score rule 'mean'"):
        result.score("mean")


def test_python_api_size_threshold_is_range_checked(pipeline):
    with pytest.raises(ValueRangeError, match="size_threshold must be in"):
        pipeline.segment(np.zeros((32, 32, 3), np.uint8), size_threshold=float("nan"))


def test_corrupt_clip_weights_and_training_state_name_the_file(tmp_path):
    from types import SimpleNamespace

    from iapas.backends.clip import ClipBackbone
    from iapas.weights.demo import build_demo_clip
    from iapas.prompt_learning.training import STATE_FILE, PromptTrainer

    clip_dir = build_demo_clip(tmp_path / "clip")
    (clip_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CorruptWeightsError, match=f"CLIP weight file {clip_dir / 'model.safetensors'} is corrupt"):
        ClipBackbone(clip_dir)
    (tmp_path / STATE_FILE).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CorruptWeightsError, match=f"training state {tmp_path / STATE_FILE} is corrupt"):
        PromptTrainer._resume(SimpleNamespace(), tmp_path)  # fails on reading, before any learner is needed


@pytest.mark.parametrize("key", ["detection.nope", "nope.box_threshold", "device.sub"])
def test_unknown_dotted_override_is_a_config_error(key):
    with pytest.raises(ConfigError, match="unknown setting"):
        Config().updated({key: 1})
