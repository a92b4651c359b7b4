"""RAM and RAM++ written for iapas: equal to recognize-anything's own models, loaded from the released layout.

The reference (../shared/reference/recognize-anything) runs in a subprocess from a copy, under the
transformers 4.x and fairscale that `make install` keeps apart in <venv>/reference-transformers4 and
<venv>/reference-fairscale, with a small shim for the helpers its bert.py imports from
transformers.modeling_utils (see tests/ram_reference.py). It builds RAM and RAM++ with random weights (tiny
Swin, real tagging head, real vocabulary size), saves them as the releases are saved and writes its logits
and tags; iapas loads those files through its own loader and must give the same logits and tags.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iapas.backends.ram import class_thresholds, load_ram_model, tag_list
from iapas.backends.ram.loader import tagging_state
from iapas.backends.taggers import RamTagger
from iapas.cli import main
from iapas.errors import WeightsError
from reference_source import reference_copy

VENV = Path(sys.prefix)
REFERENCE_PATHS = [Path(os.environ.get("IAPAS_REFERENCE_TRANSFORMERS", VENV / "reference-transformers4")),
                   Path(os.environ.get("IAPAS_REFERENCE_FAIRSCALE", VENV / "reference-fairscale"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The reference's RAM and RAM++ checkpoints, image, pixels, logits and tags."""
    copy = reference_copy("recognize-anything", tmp_path_factory.mktemp("ram-source"))
    absent = [str(path) for path in REFERENCE_PATHS if not path.is_dir()]
    if absent:  # as for the source itself: CI must never pass without comparing against the authors' code
        message = f"needs the reference-only packages in {', '.join(absent)} (make install puts them there)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("ram-reference")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, REFERENCE_PATHS)), "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1"}  # as the Grounding DINO reference runs: fair to a shared machine
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("ram_reference.py")), str(copy), str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def reference_tags(reference: Path, name: str) -> tuple[str, ...]:
    english = json.loads((reference / f"{name}_tags.json").read_text())["english"]
    return tuple(tag.strip() for tag in english.split("|") if tag.strip())


@pytest.mark.parametrize("name", ["ram", "ram_plus"])
def test_logits_and_tags_equal_the_reference(reference, name, tmp_path):
    """Same checkpoint file, same image: the same 4585 logits and the same English tags, in the same order."""
    path = tmp_path / f"{name}_swin_large_14m.pth"
    path.symlink_to(reference / f"{name}.pth")
    tagger = RamTagger(path, "cpu")
    assert tagger.model.shape.plus == (name == "ram_plus") and tagger.model.shape.swin.image_size == 384
    image = np.asarray(Image.open(reference / "image.png").convert("RGB"))
    np.testing.assert_array_equal(tagger.pixels(image)[0].numpy(), np.load(reference / "pixels.npy"))  # ram/transform.py
    logits = tagger.logits(image)
    expected = np.load(reference / f"{name}_logits.npy")
    assert logits.shape == (4585,) and np.ptp(expected) > 1  # distinct tags, not a tie
    np.testing.assert_allclose(logits.numpy(), expected, rtol=0, atol=1e-4)
    tags = tagger.tags_of(logits)
    assert tags == reference_tags(reference, name) and 5 < len(tags) < 500


def test_the_released_layout_loads_as_released(reference):
    """The caption side (tag encoder, text decoder) and the index buffers are left out; `vision_multi` is the head."""
    state = torch.load(reference / "ram.pth", map_location="cpu", weights_only=True)["model"]
    assert any(key.startswith("text_decoder.") for key in state) and any(key.startswith("tag_encoder.") for key in state)
    assert state["tag_encoder.embeddings.word_embeddings.weight"].shape == (30524, 768)  # the real vocabulary (+2)
    kept = tagging_state(state)
    assert not any(key.startswith(("tag_encoder.", "text_decoder.")) or key.endswith(("attn_mask", "relative_position_index"))
                   for key in kept)
    assert kept["label_embed"].shape == (4585, 512) and kept["tagging_head.encoder.layer.1.output.dense.weight"].shape == (768, 3072)
    older = {key.replace("tagging_head", "vision_multi"): value for key, value in state.items()}
    assert tagging_state(older).keys() == kept.keys()


def test_tag_list_and_thresholds_are_the_released_data():
    tags = tag_list()
    assert len(tags) == 4585 and tags[:2] == ("3D CG rendering", "3D glasses") and tags[-1] == "zoo"
    thresholds = class_thresholds(4587)
    assert thresholds[0] == pytest.approx(0.65) and thresholds[-1] == pytest.approx(0.68)  # past the file: ram.py's 0.68


def test_official_resize_is_iap_zsas_bicubic(weights_dir):
    """IAP-ZSAS util/function.py load_image: PIL's default resize to 384, then Resize (a no-op), ToTensor, Normalize."""
    import torchvision.transforms as transforms

    tagger = RamTagger(weights_dir / "demo" / "ram_demo.pth", "cpu", resample="bicubic")
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    size = tagger.size
    pipeline = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                   transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    expected = pipeline(Image.fromarray(image).resize((size, size)))
    np.testing.assert_array_equal(tagger.pixels(image)[0].numpy(), expected.numpy())


def test_wrong_files_are_one_line_errors(weights_dir, tmp_path):
    garbage = tmp_path / "ram.pth"
    garbage.write_bytes(b"not really")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_ram_model(garbage)
    with pytest.raises(WeightsError, match="is not a RAM checkpoint"):
        load_ram_model(weights_dir / "demo" / "sam_demo.pth")
    state = torch.load(weights_dir / "demo" / "ram_demo.pth", weights_only=True)["model"]
    state["label_embed"] = state["label_embed"][:100]
    torch.save({"model": state}, tmp_path / "short.pth")
    with pytest.raises(WeightsError, match="label_embed has 100 rows; RAM's tag list has 4585 tags"):
        load_ram_model(tmp_path / "short.pth")
    state = torch.load(weights_dir / "demo" / "ram_demo.pth", weights_only=True)["model"]
    del state["tagging_head.encoder.layer.1.output.dense.bias"]
    state["visual_encoder.head.weight"] = torch.zeros(3)  # unknown to RAM: ignored, as the reference's loader does
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="lacks RAM tensors \\(tagging_head.encoder.layer.1.output.dense.bias"):
        load_ram_model(tmp_path / "partial.pth")
    state["tagging_head.encoder.layer.1.output.dense.bias"] = torch.zeros(32)
    torch.save({"model": state}, tmp_path / "extra.pth")
    assert load_ram_model(tmp_path / "extra.pth").shape.head.hidden == 32


def test_calibrate_with_the_ram_tagger_end_to_end(weights_dir, tmp_path, capsys):
    """`iapas calibrate --tagger ram` on the demo RAM (written in the released layout): the tags RAM gives."""
    from iapas.data.synth import synth_sample
    from iapas.vocabulary import remove_defect_words

    normal = tmp_path / "normal"
    normal.mkdir()
    rng = np.random.default_rng(0)
    images = [synth_sample("washer", None, rng, 96)[0] for _ in range(2)]
    for index, image in enumerate(images):
        Image.fromarray(image).save(normal / f"{index}.png")
    out = tmp_path / "c.json"
    code = main(["calibrate", str(normal), "--weights", str(weights_dir), "--tagger", "ram", "-o", str(out),
                 "--cache-dir", str(tmp_path / "llm")])
    assert code == 0, capsys.readouterr().err
    calibration = json.loads(out.read_text())
    expected = remove_defect_words(RamTagger(weights_dir / "demo" / "ram_demo.pth", "cpu").tag(images))
    assert expected and tuple(calibration["tags"]) == expected
    assert calibration["models"]["tagger"] == "ram:ram_demo.pth"


def test_official_recipe_tags_with_ram_when_present(weights_dir, tmp_path):
    """`tagger = "auto-ram"`: RAM from the weights dir with IAP-ZSAS's resize; without it, `auto` and a note."""
    from iapas.config import build_config
    from iapas.methods.iapas.preprocess import resolve_tagger_spec

    notes = []
    config = build_config("official").updated({"weights_dir": str(weights_dir)})
    spec = resolve_tagger_spec(config, "washer", "cpu", notes.append)
    assert (spec.backend, Path(spec.weights).name, spec.resample, notes) == ("ram", "ram_demo.pth", "bicubic", [])
    spec = resolve_tagger_spec(config.updated({"weights_dir": str(tmp_path)}), "washer", "cpu", notes.append)
    assert spec.backend == "fixed" and "RAM (ram_swin_large_14m.pth" in notes[0]


def test_the_ram_file_defines_calibrating_runs(weights_dir, tmp_path):
    """A run that tags with RAM is fingerprinted with RAM's file: adding or replacing it does not reuse old results."""
    from iapas.config import build_config
    from iapas.runs.fingerprint import MODEL_PATHS

    official = build_config("official").updated({"weights_dir": str(weights_dir)})
    assert Path(MODEL_PATHS["tagger"](official)).name == "ram_demo.pth"
    assert Path(MODEL_PATHS["tagger"](official.updated({"calibration.tagger": "ram"}))).name == "ram_demo.pth"
    assert MODEL_PATHS["tagger"](official.updated({"weights_dir": str(tmp_path), "calibration.tagger": "ram"})) is None


@pytest.mark.parametrize("descriptions", [1, 51])
def test_full_size_shapes_are_read_back_from_the_state_dict(descriptions, tmp_path):
    """Swin-L 384 px with the q2l head (RAM) and its 4585 x 51 descriptions (RAM++): every size read off the tensors."""
    from iapas.backends.ram import RamModel, RamShape
    from iapas.backends.ram.loader import shape_of

    shape = RamShape(descriptions=descriptions)
    with torch.device("meta"):
        state = RamModel(shape).state_dict()
    assert shape_of(state, tmp_path / "x.pth") == shape
    assert state["label_embed"].shape == (4585 * descriptions, 512) and state["visual_encoder.norm.weight"].shape == (1536,)
    assert ("reweight_scale" in state) == (descriptions > 1)
