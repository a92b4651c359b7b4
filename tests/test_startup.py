"""The front door: `import iapas`, `import iapas.cli` and every `--help` stay free of the heavy libraries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "transformers", "gradio", "ray", "open_clip", "cv2")


def loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `code` (this checkout first on the path)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_iapas_loads_nothing_heavy():
    assert loaded_after("import iapas") == []


def test_every_help_and_the_version_load_nothing_heavy():
    # builds the parser and formats the help of every command and sub-command, as `iapas X --help` does
    code = """
import argparse, contextlib, io
import iapas.cli
from iapas.cli import build_parser

def walk(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)

helps = [p.format_help() for p in walk(build_parser())]
assert len(helps) > 15, len(helps)
with contextlib.redirect_stdout(io.StringIO()):
    try:
        iapas.cli.main(["--version"])
    except SystemExit:
        pass
"""
    assert loaded_after(code) == []


def test_version_prints_the_package_version(capsys):
    from iapas import __version__
    from iapas.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"iapas {__version__}"


def test_public_names_still_import_from_the_top():
    import iapas
    from iapas import Config, Pipeline
    from iapas.methods.iapas.pipeline import Pipeline as Defined

    assert Pipeline is Defined and Config().recipe == "iapas"
    assert set(iapas.__all__) <= set(dir(iapas))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        iapas.Nope  # noqa: B018
