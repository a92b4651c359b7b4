"""`iapas reproduce`: two synthetic datasets, two tiny real methods (CLIPSeg, WinCLIP) on demo weights."""
from __future__ import annotations

import csv
import json

import pytest

from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.methods import METHODS
from iapas.reproduce.locate import MissingInputs, find_dataset
from iapas.reproduce.run import ReproduceOptions, reproduce
from iapas.reproduce.tables import TABLES, table1_numbers
from iapas.weights.demo import build_demo_clip, build_demo_clipseg

SMALL = SynthSpec(categories=("tile", "washer"), defects=("scratch",), train_good=1, test_good=1, per_defect=2, size=64)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("reproduce")
    write_synth_dataset(base / "data" / "mvtec_anomaly_detection", SMALL)
    write_synth_dataset(base / "data" / "MPDD", SMALL)
    build_demo_clip(base / "weights" / "demo" / "clip-demo")
    build_demo_clipseg(base / "weights" / "demo" / "clipseg-demo")
    return base


def options(inputs, out, rows=("clipseg", "winclip")):
    return ReproduceOptions("table1", out, data_root=inputs / "data", rows=rows, datasets=("mvtec", "mpdd"),
                            overrides={"weights_dir": str(inputs / "weights"), "device": "cpu"}, progress=False)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_datasets_are_found_by_their_usual_names(inputs):
    assert find_dataset(inputs / "data", "mvtec").name == "mvtec_anomaly_detection"
    assert find_dataset(inputs / "data", "mpdd").name == "MPDD"
    assert find_dataset(inputs / "data", "btad") is None


def test_table1_shape_and_paper_column(inputs, tmp_path):
    paths = reproduce(options(inputs, tmp_path))
    rows = read_csv(paths["csv"])
    spec = TABLES.get("table1")
    assert len(rows) == len(spec.rows) * 2 * 2  # every paper row x 2 datasets x (AP, F1-max)
    paper = table1_numbers()
    for row in rows:
        assert float(row["paper"]) == pytest.approx(paper[row["row"], row["dataset"]][row["metric"]])
        ran = row["row"] in ("CLIPseg", "WinCLIP")
        assert bool(row["ours"]) == ran
        if ran:
            assert 0 <= float(row["ours"]) <= 100
            assert float(row["difference"]) == pytest.approx(float(row["ours"]) - float(row["paper"]), abs=0.011)
    # our mean equals the mean of the per-category results the eval machinery wrote (rounded as the paper's code)
    run_dir = tmp_path / "mvtec" / "protocol-paper" / "clipseg"
    per_category = [json.loads((run_dir / "categories" / f"{c}.json").read_text())["metrics"]["pixel_ap"] for c in SMALL.categories]
    ours = next(r for r in rows if r["row"] == "CLIPseg" and r["dataset"] == "mvtec" and r["metric"] == "pixel_ap")
    assert float(ours["ours"]) == pytest.approx(sum(round(100 * v, 2) for v in per_category) / 2, abs=0.006)
    text = paths["markdown"].read_text()
    assert "SDP: not implemented in iapas" in text and "| IAP-AS | - / 31.43 |" in text
    assert paths["figure"].stat().st_size > 1000


def test_a_killed_run_redoes_no_finished_category(inputs, tmp_path, monkeypatch):
    from iapas.methods.clipseg import build

    calls = {"n": 0, "stop": 0}

    def counting(config, ablate):
        method = build(config, ablate)
        segment = method.segment

        def counted(image):
            calls["n"] += 1
            if calls["stop"] and calls["n"] > calls["stop"]:
                raise KeyboardInterrupt
            return segment(image)

        method.segment = counted
        return method

    monkeypatch.setitem(METHODS._entries, "clipseg", counting)
    per_category = 3  # 1 normal + 2 scratched images of each category (the paper protocol keeps MVTec's normal ones)
    calls["stop"] = per_category + 1  # killed on the second image of mvtec's second category
    with pytest.raises(KeyboardInterrupt):
        reproduce(options(inputs, tmp_path, rows=("clipseg",)))
    finished = tmp_path / "mvtec" / "protocol-paper" / "clipseg" / "categories"
    assert [p.stem for p in finished.glob("*.json")] == ["tile"]
    stamp = (finished / "tile.json").stat().st_mtime_ns
    calls.update(n=0, stop=0)
    reproduce(options(inputs, tmp_path, rows=("clipseg",)))
    # mvtec: washer's 2 unfinished images (its first was saved before the kill); mpdd: 2 x 2 anomalous images
    assert calls["n"] == (per_category - 1) + 2 * 2
    assert (finished / "tile.json").stat().st_mtime_ns == stamp
    calls["n"] = 0
    reproduce(options(inputs, tmp_path, rows=("clipseg",)))
    assert calls["n"] == 0  # everything finished: no image is segmented again


def test_every_missing_input_is_listed_before_anything_runs(inputs, tmp_path):
    bare = ReproduceOptions("table1", tmp_path / "out", data_root=inputs / "data", rows=("clipseg", "winclip"),
                            overrides={"weights_dir": str(tmp_path / "no-weights"), "device": "cpu"}, progress=False)
    with pytest.raises(MissingInputs) as error:
        reproduce(bare)
    lines = str(error.value).splitlines()[1:]
    assert sum("dataset" in line for line in lines) == 5  # btad, ksdd1, mtd, dtd, dagm
    assert any("CLIPseg: no clipseg weights" in line and "iapas weights download clipseg-rd64-refined" in line for line in lines)
    assert any(line.strip().startswith("- WinCLIP: no clip weights") for line in lines)
    assert not (tmp_path / "out").exists()


def test_trained_rows_name_their_training_command_and_paper_only_rows_their_reason(inputs, tmp_path):
    from iapas.reproduce.run import plan

    wanted = ReproduceOptions("genclip-table1", tmp_path, data_root=inputs / "data", datasets=("mvtec", "mpdd"), rows=("genclip",),
                              overrides={"weights_dir": str(inputs / "weights"), "device": "cpu"}, progress=False, skip_missing=True)
    _, cells, outcome = plan(wanted)
    lines = [item.line() for item in outcome.missing]
    assert any(f"iapas train genclip --recipe official --dataset visa --root <visa root> -o {inputs / 'weights' / 'genclip-visa'}" in line for line in lines)
    assert any(f"iapas train genclip --recipe official --dataset mvtec --root {inputs / 'data' / 'mvtec_anomaly_detection'}" in line for line in lines)
    assert cells == [] and "not run" in outcome.notes["GenCLIP"] and "CoOp: not implemented in iapas" in outcome.notes["CoOp"]
    hepe = ReproduceOptions("hepe-table1", tmp_path, data_root=inputs / "data", datasets=("mvtec",), rows=("hepe",),
                            overrides={"weights_dir": str(inputs / "weights")}, progress=False, skip_missing=True)
    _, cells, outcome = plan(hepe)  # HEPE releases no checkpoint: its row names the training command
    assert cells == [] and any("no checkpoint is released; train it first: `iapas train hepe --dataset visa" in item.line()
                               for item in outcome.missing)


def test_cli_lists_what_is_missing_and_runs_a_table(inputs, tmp_path, capsys):
    from cli_runner import error_lines, run

    code, _, err = run(capsys, "reproduce", "table9", "--data", inputs / "data")
    assert code == 2 and error_lines(err) == ["iapas: error: unknown table 'table9' (choose from faprompt-table2, genclip-table1, "
                                              "hepe-table1, table1, table3)"]
    code, _, err = run(capsys, "reproduce", "table1", "--data", inputs / "data", "--weights", tmp_path / "none", "--rows", "clipseg")
    assert code == 2 and "6 input(s) missing; nothing was run" in err and "Traceback" not in err
    code, out, err = run(capsys, "reproduce", "table1", "--dataset-root", f"mvtec={inputs / 'data' / 'mvtec_anomaly_detection'}",
                         "--datasets", "mvtec", "--rows", "clipseg", "--weights", inputs / "weights", "--device", "cpu",
                         "--limit", "2", "-o", tmp_path / "out", "--no-progress")
    assert code == 0 and "| CLIPseg |" in out and "Smoke run" in out and (tmp_path / "out" / "table1.csv").is_file()
