"""The front door: every command's help in named groups, misplaced options refused per method family, the weights folder found from anywhere."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from cli_runner import error_lines, run

ROOT = Path(__file__).resolve().parents[1]
from iapas.cli import build_parser, main
from iapas.cli.common import (BENCHMARK, CLIP_METHODS, CONFIGURATION, DATASET, ENGINE, EVALUATION, EXPORT, IAPAS_DETECTOR,
                              INPUTS_OUTPUTS, METHOD, MODELS, PREPROCESSING, SERVER, SPEED, TRAINING)
from iapas.cli.method_options import check_method_options
from iapas.errors import ConfigError, WeightsError

# command -> the option groups its help must show
EXPECTED_GROUPS = {
    ("segment",): {INPUTS_OUTPUTS, CONFIGURATION, METHOD, IAPAS_DETECTOR, CLIP_METHODS, MODELS, SPEED, ENGINE},
    ("bench",): {BENCHMARK, CONFIGURATION, METHOD, IAPAS_DETECTOR, CLIP_METHODS, MODELS, SPEED},
    ("eval",): {INPUTS_OUTPUTS, CONFIGURATION, METHOD, EVALUATION, CLIP_METHODS, PREPROCESSING, MODELS, SPEED},
    ("calibrate",): {INPUTS_OUTPUTS, CONFIGURATION, PREPROCESSING, MODELS},
    ("train", "adaclip"): {INPUTS_OUTPUTS, TRAINING, CLIP_METHODS, CONFIGURATION, MODELS},
    ("train", "faprompt"): {INPUTS_OUTPUTS, TRAINING, CLIP_METHODS, CONFIGURATION, MODELS},
    ("data", "synth"): {INPUTS_OUTPUTS, DATASET},
    ("export",): {EXPORT, CONFIGURATION, MODELS},
    ("serve",): {SERVER, CLIP_METHODS, CONFIGURATION, MODELS},
    ("config", "show"): {CONFIGURATION, MODELS},
    ("weights", "download"): {INPUTS_OUTPUTS},
    ("weights", "make-demo"): {INPUTS_OUTPUTS},
}


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command's parser with its words, e.g. (("train", "adaclip"), parser)."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield path, parser
    for action in subcommands:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, path + (name,))


def shown_groups(help_text: str) -> set[str]:
    """The section titles of an argparse help text (lines ending in ':' at the left margin)."""
    return {line[:-1] for line in help_text.splitlines() if line.endswith(":") and not line.startswith(" ")}


def test_every_help_exits_0_and_lists_its_groups(capsys):
    commands = dict(leaf_parsers(build_parser()))
    assert set(EXPECTED_GROUPS) <= set(commands)
    for words, parser in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*words, "--help"])
        help_text = capsys.readouterr().out
        assert exit_info.value.code == 0, words
        assert help_text.startswith(f"usage: iapas {' '.join(words)}"), words
        assert EXPECTED_GROUPS.get(words, set()) <= shown_groups(help_text), (words, shown_groups(help_text))
        assert "positional arguments" not in shown_groups(help_text) or words == (), words  # every positional in a group too
        for action in parser._actions:  # every option says what it is for
            assert action.help, f"iapas {' '.join(words)} {action.option_strings or action.dest} has no help"


def parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args([str(a) for a in argv])


@pytest.mark.parametrize("argv, message", [
    # IAP-AS: a learned method's checkpoint, a CLIP class name, WinCLIP+'s shots
    (["segment", "x.png", "--prompts", "p.pt"], "--prompts is a learned method's checkpoint; IAP-AS takes --prompt WORD"),
    (["segment", "x.png", "--category", "bottle"],
     "--category is the CLIP methods' class name; IAP-AS takes --prompt WORD or a --calibration file"),
    (["bench", "x.png", "--shots", "2"],
     "--shots is the few-shot methods' number of normal reference images (WinCLIP+, AnomalyDINO); --method iapas does not use it"),
    (["eval", "--dataset", "mvtec", "--root", "r", "--genclip-prompts", "g.pt"],
     "--genclip-prompts is GenCLIP's trained prompts; --method iapas does not use it"),
    # CLIP (zero-shot): IAP-AS's detector options, a learned checkpoint
    (["segment", "x.png", "--method", "winclip", "--box-threshold", "0.3"],
     "--box-threshold is IAP-AS's Grounding DINO box threshold; --method winclip does not use it"),
    (["segment", "x.png", "--method", "winclip", "--prompts", "p.pt"], "--prompts is a learned method's checkpoint; WinCLIP learns nothing"),
    # learned CLIP: IAP-AS's word, WinCLIP's rules, another method's checkpoint
    (["segment", "x.png", "--method", "anomalyclip", "--prompt", "crack"],
     "--prompt is IAP-AS's detector prompt word; the CLIP methods take --category NAME"),
    (["bench", "x.png", "--method", "faprompt", "--winclip-variant", "anomalib"],
     "--winclip-variant is WinCLIP's choice of rules; --method faprompt does not use it"),
    (["eval", "--dataset", "mvtec", "--root", "r", "--method", "anomalyclip", "--adaclip-prompts", "a.pth"],
     "--adaclip-prompts is AdaCLIP's trained weights; --method anomalyclip does not use it"),
    (["eval", "--dataset", "mvtec", "--root", "r", "--method", "winclip", "--llm", "gguf"],
     "--llm is IAP-AS's preprocessing LLM; --method winclip does not use it"),
    (["train", "adaclip", "--dataset", "mvtec", "--root", "r", "-o", "o", "--detector", "gd"],
     "--detector is IAP-AS's Grounding DINO weights; iapas train adaclip does not use it"),
])
def test_a_misplaced_option_is_refused_in_one_line_naming_what_it_is_for(argv, message):
    args = parsed(*argv)
    method = getattr(args, "method", None) or args.trainer
    with pytest.raises(ConfigError) as raised:
        check_method_options(args, method, f"iapas train {args.trainer}" if args.command == "train" else None)
    assert str(raised.value) == message


@pytest.mark.parametrize("argv", [
    ["segment", "x.png", "--prompt", "crack", "--box-threshold", "0.3", "--calibration", "c.json"],
    ["segment", "x.png", "--method", "winclip", "--category", "bottle", "--shots", "2", "--clip", "c"],
    ["segment", "x.png", "--method", "adaclip", "--prompts", "p.pt", "--adaclip-prompts", "a.pth"],
    ["bench", "x.png", "--method", "genclip", "--genclip-prompts", "g.pt", "--category", "bottle"],
    ["eval", "--dataset", "mvtec", "--root", "r", "--clip", "c"],  # eval's --clip is the tagger's too
])
def test_options_where_they_belong_pass(argv):
    check_method_options(parsed(*argv))


def test_every_registered_method_has_a_family():
    """Every method iapas/methods/__init__.py registers (test stubs register more at run time: not counted)."""
    import re

    from iapas.methods.families import METHOD_FAMILIES

    registered = re.findall(r'METHODS\.register_lazy\("([^"]+)"', (ROOT / "iapas" / "methods" / "__init__.py").read_text())
    assert "iapas" in registered and set(registered) <= set(METHOD_FAMILIES)


def test_the_refusal_reaches_the_command_line_before_anything_is_written(capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", tmp_path / "x.png", "-o", out, "--prompts", "scratch")
    assert code == 2 and error_lines(err) == ["iapas: error: --prompts is a learned method's checkpoint; IAP-AS takes --prompt WORD"]
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# --- the weights folder ----------------------------------------------------------------------------

@pytest.fixture
def places(tmp_path, monkeypatch):
    """A current folder and a per-user data folder of this test's own; $IAPAS_WEIGHTS unset."""
    here, data = tmp_path / "here", tmp_path / "user-data"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("IAPAS_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(data))  # platformdirs' per-user data folder on Linux
    return here, data / "iapas" / "weights"


def test_the_weights_folder_is_the_variable_then_a_local_weights_folder_then_the_users(places, tmp_path, monkeypatch):
    from iapas.config import Config
    from iapas.folders import default_weights_dir

    here, user = places
    assert default_weights_dir() == user and Config().weights_dir == str(user)
    (here / "weights").mkdir()
    (here / "weights" / "README.md").write_text("what goes here\n")
    assert default_weights_dir() == user  # a checkout's weights/ with its README alone does not count
    (here / "weights" / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    assert default_weights_dir() == here / "weights" and Config().weights_dir == str(here / "weights")
    monkeypatch.setenv("IAPAS_WEIGHTS", str(tmp_path / "chosen"))
    assert default_weights_dir() == tmp_path / "chosen" and Config().weights_dir == str(tmp_path / "chosen")
    args = parsed("config", "show", "--weights", "elsewhere")
    from iapas.cli.common import base_config

    assert base_config(args).weights_dir == "elsewhere"  # --weights wins over all of them


def test_missing_weights_name_every_folder_looked_at(places):
    from iapas.config import Config
    from iapas.weights.manifest import find_weights

    here, user = places
    with pytest.raises(WeightsError) as raised:
        find_weights("detector", Config().weights_dir)
    message = str(raised.value)
    assert f"no detector weights in {user}/" in message
    assert "$IAPAS_WEIGHTS not set" in message and str(here / "weights") in message and str(user) in message
    with pytest.raises(WeightsError) as chosen:
        find_weights("detector", here / "mine")
    assert "looked at" not in str(chosen.value)  # a folder the user named is the only one


def test_make_demo_writes_to_the_default_folder_and_any_folder_then_finds_it(places, capsys, tmp_path, monkeypatch):
    from iapas.config import Config
    from iapas.weights.manifest import find_weights

    here, user = places
    code, out, err = run(capsys, "weights", "make-demo")
    assert code == 0 and f"demo weights are in {user}" in err and str(user) in out
    code, out, err = run(capsys, "weights", "where")
    assert code == 0 and out.strip() == str(user)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert find_weights("segmenter", Config().weights_dir)[1].is_relative_to(user)


# --- precision: auto for IAP-AS under its default recipe --------------------------------------------

def test_auto_is_iapas_default_under_the_iapas_recipe_only_and_the_fingerprint_records_asked_and_ran(monkeypatch):
    import torch

    from iapas.cli.common import base_config
    from iapas.runs.fingerprint import SEGMENT_FIELDS, RunSpec, build_fingerprint

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})  # a CPU with native bf16
    default = base_config(parsed("segment", "x.png", "--device", "cpu"))
    assert (default.precision, default.clip_methods.precision) == ("auto", "fp32")
    official = base_config(parsed("segment", "x.png", "--device", "cpu", "--recipe", "official"))
    assert (official.precision, official.clip_methods.precision) == ("fp32", "fp32")
    asked = base_config(parsed("segment", "x.png", "--device", "cpu", "--precision", "bf16"))
    assert (asked.precision, asked.clip_methods.precision) == ("bf16", "bf16")  # --precision asks every method

    def recorded(config, method):
        fingerprint = build_fingerprint(RunSpec(config, method, {}), SEGMENT_FIELDS)
        return fingerprint["config"]["precision"], fingerprint["config"]["clip_methods.precision"], fingerprint["arithmetic"]

    assert recorded(default, "iapas") == ("auto", "fp32", "bf16")  # asked auto, ran bf16
    assert recorded(default, "winclip") == ("auto", "fp32", "fp32")  # the CLIP methods stay fp32 unless asked
    assert recorded(asked, "anomalyclip") == ("bf16", "bf16", "bf16")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})  # no native bf16
    assert recorded(default, "iapas") == ("auto", "fp32", "fp32")


def test_the_default_recipe_on_a_bf16_cpu_keeps_segment_maps_within_the_stated_tolerance(capsys, weights_dir, tmp_path, monkeypatch):
    """`iapas segment` with no precision option: bf16 where the CPU has it, maps within test_batching.py's bf16 tolerance."""
    import json

    import numpy as np
    import torch
    from PIL import Image
    from test_batching import BF16_MAP_MEAN_ABS

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    image = tmp_path / "part.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(image)
    maps = {}
    for name, extra in (("default", []), ("fp32", ["--precision", "fp32"])):
        out = tmp_path / name
        code, _, err = run(capsys, "segment", image, "-o", out, "--weights", weights_dir, "--device", "cpu", "--no-progress", *extra)
        assert code == 0, err
        assert json.loads((out / "iapas-fingerprint.json").read_text())["arithmetic"] == ("bf16" if name == "default" else "fp32")
        maps[name] = np.load(out / "part.png.npy")
    assert not np.array_equal(maps["default"], maps["fp32"])  # bf16 did run
    assert np.abs(maps["default"] - maps["fp32"]).mean() < BF16_MAP_MEAN_ABS
