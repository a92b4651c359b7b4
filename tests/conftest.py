"""Shared fixtures: tiny real-architecture models saved in their real formats, and test images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """A weights dir holding the tiny demo Grounding DINO (HF dir) and SAM (.pth), as `make-demo` writes it."""
    from iapas.demo_weights import make_demo_weights

    directory = tmp_path_factory.mktemp("weights")
    make_demo_weights(directory)
    return directory


@pytest.fixture(scope="session")
def hf_sam_dir(tmp_path_factory) -> Path:
    from iapas.demo_weights import build_demo_hf_sam

    return build_demo_hf_sam(tmp_path_factory.mktemp("hf-sam") / "sam-vit-base")


@pytest.fixture(scope="session")
def pipeline(weights_dir):
    from iapas import Pipeline

    return Pipeline.from_pretrained(weights_dir)


def write_rgb(path: Path, height: int = 96, width: int = 128, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    write_rgb(folder / "a.png", seed=1)
    write_rgb(folder / "b.jpg", seed=2)
    write_rgb(folder / "sub" / "c.bmp", seed=3)
    return folder
