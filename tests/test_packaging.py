"""The package installs whole: a wheel built from the tree carries every resource and runs from a fresh virtual environment.

The fresh environment gets the wheel alone (`pip install --no-deps`); its dependencies come from the
interpreter running the tests through a .pth line, so nothing is downloaded. It takes some 20-40 s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "iapas" / "resources"


def run(*command, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env, timeout=240)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_the_wheel_carries_every_resource_and_runs_from_a_fresh_environment(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    shutil.copytree(ROOT / "iapas", source / "iapas", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp_path / "dist",
        ".", cwd=source)
    wheel = next((tmp_path / "dist").glob("iapas-*.whl"))
    shipped = {f"iapas/resources/{p.relative_to(RESOURCES).as_posix()}" for p in RESOURCES.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert any("/recipes/" in name for name in shipped) and any("/profiles/" in name for name in shipped)
    assert shipped <= set(zipfile.ZipFile(wheel).namelist())

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch and the rest, not downloaded
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = run(python, "-c", "import iapas; print(iapas.__file__)", cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the checkout
    from iapas import __version__

    assert run(venv / "bin" / "iapas", "--version", cwd=tmp_path, env=env).stdout.strip() == f"iapas {__version__}"
    shown = run(venv / "bin" / "iapas", "config", "show", "--recipe", "official", cwd=tmp_path, env=env).stdout
    assert "recipe: official" in shown and "caption_format: official" in shown
