"""Every numeric option validated in one place, and training that never mixes runs (its fingerprint)."""
import argparse
import json
import shutil

import pytest

from iapas.cli import build_parser, main
from iapas.cli.common import NUMERIC_OPTIONS, apply_numeric_rules, unlisted_numeric_options


def test_every_numeric_option_of_every_command_has_a_rule():
    """build_parser installs NUMERIC_OPTIONS everywhere; an int/float option without a rule is refused."""
    seen = set()

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    walk(command)
            elif action.dest in NUMERIC_OPTIONS:
                assert action.type is NUMERIC_OPTIONS[action.dest]
                seen.add(action.dest)

    parser = build_parser()
    assert unlisted_numeric_options(parser) == []  # a new numeric option needs its line in NUMERIC_OPTIONS
    walk(parser)
    assert {"epochs", "lr", "limit", "image_size", "workers", "batch_size", "stall_timeout"} <= seen
    bare = argparse.ArgumentParser()
    bare.add_argument("--new-ratio", type=float)
    apply_numeric_rules(bare)
    assert unlisted_numeric_options(bare) == ["--new-ratio"]
    with pytest.raises(SystemExit):
        bare.parse_args(["--new-ratio", "nan"])  # unlisted, it still refuses NaN and inf


TRAIN = ["train", "anomalyclip", "--dataset", "mvtec", "--root", "aux", "-o", "ckpt"]


@pytest.mark.parametrize("argv, message", [
    (TRAIN + ["--epochs", "0"], "--epochs: must be a whole number of at least 1"),
    (TRAIN + ["--limit", "-3"], "--limit: must be 0 or more"),
    (TRAIN + ["--lr", "nan"], "--lr: must be a positive finite number"),
    (TRAIN + ["--lr", "-1"], "--lr: must be a positive finite number"),
    (TRAIN + ["--lr", "inf"], "--lr: must be a positive finite number"),
    (TRAIN + ["--image-size", "-5"], "--image-size: must be a whole number of at least 1"),
    (TRAIN + ["--batch-size", "0"], "--batch-size: must be a whole number of at least 1"),
    (["export", "--format", "onnx", "--image-size", "0"], "--image-size: must be a whole number of at least 1"),
    (["export", "--format", "onnx", "--image-size", "-64"], "--image-size: must be a whole number of at least 1"),
    (["segment", "x.png", "-o", "out", "--workers", "-1"], "--workers: must be 0 or more"),
    (["serve", "--port", "70000"], "--port: must be a TCP port"),
    (["weights", "download", "--stall-timeout", "0"], "--stall-timeout: must be a positive number of seconds"),
    (["data", "synth", "out", "--size", "-1"], "--size: must be a whole number of at least 1"),
])
def test_bad_numbers_are_refused_before_anything_runs(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def train(weights_dir, root, out, *extra):
    return main(["train", "anomalyclip", "--dataset", "mvtec", "--root", str(root), "-o", str(out), "--epochs", "1",
                 "--limit", "2", "--layers", "2", "--weights", str(weights_dir), "--no-progress", *extra])


def test_resume_under_other_settings_is_refused_naming_what_changed(capsys, weights_dir, washer_hole_root, tmp_path):
    out = tmp_path / "ckpt"
    assert train(weights_dir, washer_hole_root, out) == 0
    fingerprint = json.loads((out / "iapas-fingerprint.json").read_text())
    assert fingerprint["learning_rate"] == 1e-3 and fingerprint["batch_size"] == 8 and fingerprint["method"] == "anomalyclip"
    capsys.readouterr()
    assert train(weights_dir, washer_hole_root, out, "--lr", "0.01") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING: ")]  # demo weights
    assert len(err) == 1 and "learning_rate 0.001 -> 0.01" in err[0] and "--overwrite" in err[0]
    other_root = tmp_path / "other"
    shutil.copytree(washer_hole_root, other_root)
    assert train(weights_dir, other_root, out) == 2  # another --root is refused too
    err = capsys.readouterr().err
    assert "holds results made with other settings (data" in err, err
    assert train(weights_dir, washer_hole_root, out, "--batch-size", "2") == 2
    assert "batch_size 8 -> 2" in capsys.readouterr().err
    assert train(weights_dir, washer_hole_root, out, "--lr", "0.01", "--overwrite") == 0  # starts over
    assert "last loss" in capsys.readouterr().err
    assert json.loads((out / "iapas-fingerprint.json").read_text())["learning_rate"] == 0.01
    assert json.loads((out / "train_log.json").read_text())["epoch"] == 1
