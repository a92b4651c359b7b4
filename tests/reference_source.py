"""Where the authors' reference source lives for equality tests, and the rule for its absence.

The source sits in `shared/reference/` beside the project's checkout (`../shared/reference` from the root).
A test that needs it skips, saying why, where it is absent, except under `CI=true`, where its absence fails
the run: CI must never pass without comparing against the authors' code.
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator, Mapping, Sequence

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


def _loaded_from(module: ModuleType, root: Path) -> bool:
    """Whether a module's file (or a package's folder) lies under `root`."""
    try:
        places = [getattr(module, "__file__", None) or "", *(getattr(module, "__path__", None) or [])]
    except Exception:  # noqa: BLE001 - a lazy module may raise on attribute access: not the reference's
        return False
    return any(Path(place).resolve().is_relative_to(root) for place in places if place)


@contextmanager
def reference_imports(folder: Path, also_on_path: Sequence[Path] = (), shadowed: Sequence[str] = (),
                      stand_ins: Mapping[str, ModuleType] | None = None) -> Iterator[None]:
    """Import from a copy of the authors' source for the block: `folder` (then `also_on_path`) first on sys.path,
    no bytecode written, `stand_ins` in sys.modules for imports absent from our environment.

    Modules of the top-level names in `shadowed` (the reference's own `src`, say), and any module a stand-in
    replaces, are set aside first so the reference sees its own. Afterwards every module loaded from `folder`
    and every stand-in is forgotten, so nothing of the reference stays importable for other tests, and the
    set-aside modules come back.
    """
    root, stand_ins = Path(folder).resolve(), dict(stand_ins or {})
    set_aside = {name: sys.modules.pop(name) for name in list(sys.modules)
                 if name.split(".")[0] in shadowed or name in stand_ins}
    before = set(sys.modules)
    sys.modules.update(stand_ins)
    paths = [str(folder), *map(str, also_on_path)]
    sys.path[:0] = paths
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = writes_bytecode
        for path in paths:
            sys.path.remove(path)
        for name in set(sys.modules) - before:
            if name in stand_ins or name.split(".")[0] in shadowed or _loaded_from(sys.modules[name], root):
                del sys.modules[name]
        sys.modules.update(set_aside)
