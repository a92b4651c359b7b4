"""Every user mistake on the CLI's newer surfaces is one line: export, Ray, folders, LLM answers, dataset labels."""
import sys as _sys, pathlib as _pathlib; _sys.path.insert(0, str(_pathlib.Path(__file__).parent))
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.cli import main
from iapas.errors import DatasetError, IapasError, LLMError
from local_server import LocalServer, Served


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("WARNING: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("iapas: error: ") and "internal error" not in lines[0]
    return lines[0]


def test_export_to_a_file_is_one_line(capsys, tmp_path, weights_dir):
    target = tmp_path / "taken.txt"
    target.write_text("x")
    assert main(["export", "--format", "onnx", "-o", str(target), "--weights", str(weights_dir)]) == 2
    assert "is an existing file, not a folder" in one_error_line(capsys)


def test_an_unreachable_ray_address_is_one_quick_line(capsys, tmp_path, weights_dir, image_folder):
    argv = ["segment", str(image_folder / "a.png"), "-o", str(tmp_path / "out"), "--engine", "ray",
            "--address", "127.0.0.1:1", "--connect-timeout", "5", "--weights", str(weights_dir), "--no-progress"]
    assert main(argv) == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in one_error_line(capsys)


def test_a_readable_but_not_searchable_folder_is_a_note(monkeypatch, image_folder):
    """Mode r-- on a folder: its names are listed but cannot be looked at (Path.is_file raises EACCES)."""
    from iapas.images import find_images

    blocked = image_folder / "sub"
    (blocked / "deeper").mkdir()
    real_is_file = Path.is_file

    def is_file(self):
        if blocked in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    notes = []
    assert [p.name for p in find_images(image_folder, report=notes.append)] == ["a.png", "b.jpg"]
    assert notes == [f"note: skipped unreadable folder {blocked}: Permission denied"]


def test_an_endpoint_answering_a_megabyte_of_brackets_is_one_line():
    from iapas.backends.llm import LLMSpec, load_llm

    with LocalServer(lifetime_s=30) as server:
        server.files["/v1/chat/completions"] = Served(b"[" * 1_000_000)
        with pytest.raises(LLMError, match="did not answer JSON"):
            load_llm(LLMSpec("openai", url=server.url), None).generate("p", [])


def test_deeply_nested_json_files_are_one_line(tmp_path):
    from iapas.calibration import load_calibration
    from iapas.config import load_config

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    for read in (load_config, load_calibration):
        with pytest.raises(IapasError, match="deep.json"):
            read(deep)


def test_an_empty_ksdd1_label_is_one_line(tmp_path):
    from iapas.data.datasets import load_dataset

    root = tmp_path / "ksdd1"
    (root / "kos01").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 16, 3), np.uint8)).save(root / "kos01" / "Part0.jpg")
    (root / "kos01" / "Part0_label.bmp").write_bytes(b"")
    with pytest.raises(DatasetError, match="cannot read label .*Part0_label.bmp"):
        load_dataset("ksdd1", root)
