"""Shared fixtures: tiny real-architecture models saved in their real formats, and test images."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the default weights folder (iapas/folders.py) is pinned to an empty folder of this session, so no test reads
# the weights of the user running it (./weights or the per-user folder); a test that needs weights names them
_PINNED_WEIGHTS = Path(tempfile.mkdtemp(prefix="iapas-test-weights-"))
os.environ["IAPAS_WEIGHTS"] = str(_PINNED_WEIGHTS)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """A weights dir holding the tiny demo Grounding DINO (HF dir) and SAM (.pth), as `make-demo` writes it."""
    from iapas.weights.demo import make_demo_weights

    directory = tmp_path_factory.mktemp("weights")
    make_demo_weights(directory)
    return directory


@pytest.fixture(scope="session")
def hf_sam_dir(tmp_path_factory) -> Path:
    from iapas.weights.demo import build_demo_hf_sam

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


@pytest.fixture(scope="module")
def clip_dir(weights_dir) -> Path:
    """The tiny demo CLIP directory of the demo weights."""
    from iapas.weights.manifest import find_weights

    return find_weights("clip", weights_dir)[1]


@pytest.fixture(scope="module")
def backbone(clip_dir):
    """The tiny demo CLIP loaded through the real loader (a test module may define its own)."""
    from iapas.backends.clip import ClipBackbone

    return ClipBackbone(clip_dir)


@pytest.fixture(scope="module")
def washer_hole_root(tmp_path_factory) -> Path:
    """A small MVTec-layout auxiliary dataset (one category, one defect) for training tests."""
    from iapas.data.synth import SynthSpec, write_synth_dataset

    spec = SynthSpec(categories=("washer",), defects=("hole",), train_good=1, test_good=2, per_defect=4, size=48)
    return write_synth_dataset(tmp_path_factory.mktemp("aux"), spec)
