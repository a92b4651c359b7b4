"""`iapas eval`'s decision outputs: per-image scores, F1-optimal thresholds, curves, a thresholds file `segment` reads."""
import csv
import json

import numpy as np
import pytest

import stub_methods
from cli_runner import run
from iapas.config import build_config
from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.decisions.thresholds import f1_optimal
from iapas.evaluation.evaluate import EvalOptions, run_eval


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    spec = SynthSpec(categories=("washer",), defects=("scratch", "hole"), train_good=2, test_good=4, per_defect=4,
                     size=48, seed=3)
    return write_synth_dataset(tmp_path_factory.mktemp("synth"), spec)


def evaluate(root, out, protocol="full"):
    stub_methods.RUNS["current"] = stub_methods.BrightnessMethod()
    options = EvalOptions("mvtec", root, out, method="test-brightness", categories=["washer"], progress=False, protocol=protocol)
    return run_eval(options, build_config())  # the settings the CLI's segment runs with (the default recipe)


def test_eval_writes_scores_thresholds_and_curves(synth_root, tmp_path):
    run_dir = evaluate(synth_root, tmp_path / "r")
    with open(run_dir / "image_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {row["category"] for row in rows} == {"washer"}
    labels = np.array([int(row["label"]) for row in rows])
    scores = np.array([float(row["segment_score"]) for row in rows])
    assert labels.sum() == 8
    record = json.loads((run_dir / "categories" / "washer.json").read_text())
    image = record["thresholds"]["image"]
    assert image == f1_optimal(labels, scores).to_dict()  # on the scores segment gives, not the protocol's
    flagged = scores > image["value"]
    tp = int(np.sum(flagged & (labels == 1)))
    assert image["rule"]["precision"] == pytest.approx(tp / flagged.sum())
    assert image["rule"]["recall"] == pytest.approx(tp / labels.sum())
    pixel = record["thresholds"]["pixel"]
    assert 0 <= pixel["value"] <= 1 and 0 < pixel["rule"]["f1"] <= 1 and pixel["rule"]["bins"] == 4096
    assert (run_dir / "image_curves" / "washer.png").stat().st_size > 5000
    assert "| washer | " in (run_dir / "thresholds.md").read_text()
    saved = json.loads((run_dir / "thresholds" / "washer.json").read_text())
    assert saved["method"] == "test-brightness" and saved["settings"]["category"] == "washer"
    assert saved["image_threshold"]["value"] == image["value"] and saved["pixel_threshold"]["value"] == pixel["value"]


def test_segment_reads_the_eval_thresholds_file_directly(capsys, synth_root, tmp_path):
    run_dir = evaluate(synth_root, tmp_path / "r")
    thresholds = run_dir / "thresholds" / "washer.json"
    threshold = json.loads(thresholds.read_text())["image_threshold"]["value"]
    test_dir = synth_root / "washer" / "test"
    code, _, err = run(capsys, "segment", test_dir, "-o", tmp_path / "seg", "--method", "test-brightness",
                       "--category", "washer", "--thresholds", thresholds, "--no-progress")
    assert code == 0, err
    with open(tmp_path / "seg" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    assert all(row["verdict"] == ("anomalous" if float(row["image_score"]) > threshold else "normal") for row in rows)
    code, _, err = run(capsys, "segment", test_dir, "-o", tmp_path / "seg2", "--method", "test-brightness",
                       "--thresholds", thresholds)
    assert code == 2 and 'settings.category "washer" -> null' in err


def test_paper_protocol_normalisation_does_not_leak_into_thresholds(synth_root, tmp_path):
    full = json.loads((evaluate(synth_root, tmp_path / "full") / "categories" / "washer.json").read_text())
    paper = json.loads((evaluate(synth_root, tmp_path / "paper", "paper") / "categories" / "washer.json").read_text())
    assert paper["thresholds"]["image"] == full["thresholds"]["image"]  # MVTec: the paper counts the same images
    assert paper["thresholds"]["pixel"] == full["thresholds"]["pixel"]
    assert [e["score"] for e in paper["image_scores"]] != [e["segment_score"] for e in paper["image_scores"]]


def test_per_image_normalised_recipes_keep_no_image_threshold(tmp_path):
    from iapas.decisions.thresholds import Threshold
    from iapas.evaluation.decision_outputs import write_category_thresholds

    fitted = {"image": Threshold(0.5, "f1-optimal", {}).to_dict(), "pixel": Threshold(0.4, "f1-optimal", {}).to_dict(),
              "notes": []}
    identity = {"method": "iapas", "settings": {}, "models": {}, "score_scale": {}}
    path = write_category_thresholds(tmp_path / "t.json", identity, fitted, "washer", 10, per_image_normalised=True)
    saved = json.loads(path.read_text())
    assert saved["image_threshold"] is None and saved["pixel_threshold"]["value"] == 0.4
    assert "min-max normalises every map per image" in fitted["notes"][0]
