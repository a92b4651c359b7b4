"""Where the authors' reference source lives for equality tests, and the rule for its absence.

The source sits in `shared/reference/` beside the project's checkout (`../shared/reference` from the root).
A test that needs it skips, saying why, where it is absent, except under `CI=true`, where its absence fails
the run: CI must never pass without comparing against the authors' code.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REFERENCE_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def reference_dir(name: str) -> Path:
    """The folder of one reference repository (e.g. "AdaCLIP"); skip (or fail under CI=true) when absent."""
    folder = REFERENCE_ROOT / name
    if not folder.is_dir():
        message = f"the authors' source {folder} is absent (it sits in ../shared/reference beside the checkout)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; under CI=true the equality tests must run")
        pytest.skip(message)
    return folder


def reference_copy(name: str, destination: Path) -> Path:
    """A writable copy of one reference repository under `destination` (the shared copy is read-only)."""
    source = reference_dir(name)
    target = destination / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target
