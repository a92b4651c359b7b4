"""Original Grounding DINO checkpoints: converted into transformers' model with the original's boxes and logits.

The reference is IDEA-Research's own code (groundingdino-py 0.4.0), run in a subprocess under a
transformers 4.x that `make install` puts in <venv>/reference-transformers4 (groundingdino-py does not
build under transformers 5). See tests/groundingdino_reference.py for what it writes.
"""
from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iapas.backends.base import load_detector
from iapas.backends.groundingdino_convert import (
    ORIGINAL_CONFIGS,
    SWIN_BACKBONES,
    check_against_model,
    convert_state,
    hf_config,
    original_config_from_state,
    read_original_state,
)
from iapas.cli import main
from iapas.errors import WeightsError
from iapas.weights.manifest import load_manifest

REFERENCE_TRANSFORMERS = Path(os.environ.get("IAPAS_REFERENCE_TRANSFORMERS", Path(sys.prefix) / "reference-transformers4"))
PROMPTS = ["scratch", "dent", "washer"]  # the reference's caption "scratch . dent . washer ." as iapas builds it


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The reference's tiny checkpoint, BERT, image and outputs, and a full-size SwinT-OGC's keys."""
    if find_spec("groundingdino") is None or not (REFERENCE_TRANSFORMERS / "transformers").is_dir():
        pytest.skip(f"needs groundingdino-py and a transformers 4.x in {REFERENCE_TRANSFORMERS} (make install puts them there)")
    out = tmp_path_factory.mktemp("gdino-reference")
    script = Path(__file__).with_name("groundingdino_reference.py")
    env = {**os.environ, "PYTHONPATH": str(REFERENCE_TRANSFORMERS), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def weights(reference, tmp_path_factory) -> Path:
    """A weights dir as a user has it: the original .pth and the BERT directory beside it."""
    directory = tmp_path_factory.mktemp("gdino-weights")
    shutil.copy(reference / "tiny.pth", directory / "groundingdino_swint_ogc.pth")
    shutil.copytree(reference / "bert", directory / "bert-base-uncased")
    return directory


@pytest.fixture(scope="module")
def detector(weights):
    """Our detector backend given the .pth: converted on first use into groundingdino_swint_ogc.pth.hf/."""
    return load_detector("hf-grounding-dino", weights / "groundingdino_swint_ogc.pth", torch.device("cpu"))


def test_conversion_gives_the_original_logits_and_boxes(reference, weights, detector):
    assert (weights / "groundingdino_swint_ogc.pth.hf" / "config.json").is_file()
    assert not (weights / "groundingdino_swint_ogc.pth.hf.partial").exists()
    expected = np.load(reference / "reference.npz")
    caption = json.loads((reference / "reference.json").read_text())["caption"]
    encoded = detector.processor(images=Image.open(reference / "image.png"), text=caption, return_tensors="pt")
    # same preprocessing: the image already has the size the resize rule asks for, so neither side resizes it
    np.testing.assert_allclose(encoded["pixel_values"][0].numpy(), expected["pixels"], atol=1e-6)
    assert encoded["input_ids"][0].tolist() == expected["input_ids"].tolist()
    with torch.no_grad():
        outputs = detector.model(**encoded)
    tokens = len(expected["input_ids"])
    logits, boxes = outputs.logits[0, :, :tokens].numpy(), outputs.pred_boxes[0].numpy()
    # not a comparison among ties: the logits spread over (0, 1) after the sigmoid and the boxes differ
    assert expected["logits"].std() > 0.1 and np.ptp(expected["boxes"][:, 2:], axis=0).min() > 0.05
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes, expected["boxes"], atol=1e-5, rtol=0)
    assert (outputs.logits[0, :, tokens:] == -torch.inf).all()  # the original's padding of the 256 text slots


def test_detector_boxes_match_the_original_predict(reference, detector):
    expected = np.load(reference / "reference.npz")
    image = np.asarray(Image.open(reference / "image.png").convert("RGB"))
    height, width = image.shape[:2]
    found = detector.detect(image, PROMPTS, box_threshold=0.0, text_threshold=0.5)  # every query box is kept
    cx, cy, w, h = (expected["predict_boxes"] * [width, height, width, height]).T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)  # as predicted: not cut to the image
    np.testing.assert_allclose(found.xyxy, xyxy, atol=0.05)  # pixels
    # The original scores a box by its best token over the whole caption; whatever tokens iapas's rule takes,
    # its score is at most that, and equal to it when the best token is a prompt word's.
    probabilities = 1 / (1 + np.exp(-expected["logits"]))
    np.testing.assert_allclose(probabilities.max(axis=1), expected["predict_scores"], atol=1e-6)
    assert (found.scores <= expected["predict_scores"] + 1e-4).all()
    words = np.isin(expected["input_ids"], [101, 102, 1012], invert=True)
    on_words = words[probabilities.argmax(axis=1)]
    assert on_words.any()
    np.testing.assert_allclose(found.scores[on_words], expected["predict_scores"][on_words], atol=1e-4)


@pytest.fixture(scope="module")
def border_detector(reference, tmp_path_factory):
    """The reference's border model (boxes at and past the right and bottom edges), converted through the real loader."""
    directory = tmp_path_factory.mktemp("gdino-border")
    shutil.copy(reference / "border.pth", directory / "groundingdino_swint_ogc.pth")
    shutil.copytree(reference / "bert", directory / "bert-base-uncased")
    return load_detector("hf-grounding-dino", directory / "groundingdino_swint_ogc.pth", torch.device("cpu"))


def test_boxes_at_the_border_match_the_original_with_its_epsilon(reference, border_detector):
    """Where reference points saturate at the image's edge, the original's inverse sigmoid (eps 1e-3) decides the boxes.

    iapas with the recipe's refinement_eps (1e-3) gives the original's logits and boxes; transformers' own 1e-5
    does not, so this test fails if the epsilon stops reaching the decoder or the box head.
    """
    from iapas.backends.grounding_dino import refinement_eps

    expected = np.load(reference / "border.npz")
    caption = json.loads((reference / "reference.json").read_text())["caption"]
    encoded = border_detector.processor(images=Image.open(reference / "image.png"), text=caption, return_tensors="pt")
    tokens = len(encoded["input_ids"][0])
    # the hard case is really there: box edges past the image, and sizes whose logit the two epsilons clamp apart
    right, bottom = expected["boxes"][:, 0] + expected["boxes"][:, 2] / 2, expected["boxes"][:, 1] + expected["boxes"][:, 3] / 2
    assert (right > 1).any() and (bottom > 1).any()
    with torch.no_grad(), refinement_eps(1e-3):
        ours = border_detector.model(**encoded)
    # logits to 2e-4: the four-fold box head moves sampling points far, which widens float32 noise (the same under
    # either epsilon); boxes to 1e-5, against 2.6e-2 under transformers' epsilon below
    np.testing.assert_allclose(ours.logits[0, :, :tokens].numpy(), expected["logits"], atol=2e-4, rtol=0)
    np.testing.assert_allclose(ours.pred_boxes[0].numpy(), expected["boxes"], atol=1e-5, rtol=0)
    with torch.no_grad(), refinement_eps(1e-5):
        theirs = border_detector.model(**encoded)
    assert np.abs(theirs.pred_boxes[0].numpy() - expected["boxes"]).max() > 1e-2
    with torch.no_grad():  # outside a block: transformers' port as it is, the same as 1e-5 up to its own clamp form
        plain = border_detector.model(**encoded)
    np.testing.assert_allclose(plain.pred_boxes[0].numpy(), theirs.pred_boxes[0].numpy(), atol=1e-4)


def test_detector_boxes_at_the_border_match_the_original_predict(reference, border_detector):
    """The detector (recipe epsilon 1e-3) returns the original predict()'s boxes, past the image where they reach."""
    expected = np.load(reference / "border.npz")
    image = np.asarray(Image.open(reference / "image.png").convert("RGB"))
    height, width = image.shape[:2]
    assert border_detector.refinement_eps == 1e-3
    found = border_detector.detect(image, PROMPTS, box_threshold=0.0, text_threshold=0.5)
    cx, cy, w, h = (expected["predict_boxes"] * [width, height, width, height]).T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    assert (xyxy[:, 2] > width).any()
    np.testing.assert_allclose(found.xyxy, xyxy, atol=0.05)


def test_conversions_of_another_converter_version_are_made_again(reference, tmp_path, capsys):
    from iapas.backends.groundingdino_convert import CONVERSION_RECORD, converted_groundingdino_dir

    shutil.copy(reference / "tiny.pth", tmp_path / "groundingdino_swint_ogc.pth")
    shutil.copytree(reference / "bert", tmp_path / "bert-base-uncased")
    target = converted_groundingdino_dir(tmp_path / "groundingdino_swint_ogc.pth")
    assert json.loads((target / CONVERSION_RECORD).read_text())["converter_version"] == 2
    made = (target / "config.json").stat().st_mtime_ns
    capsys.readouterr()
    assert converted_groundingdino_dir(tmp_path / "groundingdino_swint_ogc.pth") == target  # current: reused
    assert (target / "config.json").stat().st_mtime_ns == made and "converting" not in capsys.readouterr().err
    (target / CONVERSION_RECORD).unlink()  # as a conversion made before converters recorded themselves
    converted_groundingdino_dir(tmp_path / "groundingdino_swint_ogc.pth")
    assert "the converter changed" in capsys.readouterr().err and (target / CONVERSION_RECORD).is_file()


def test_image_preprocessing_matches_the_original_resize(detector):
    """Images of other sizes: the original's resize to 800 px (max 1333) and ours agree up to one grey level."""
    import groundingdino.datasets.transforms as original  # plain torchvision code, imports under transformers 5

    transform = original.Compose([original.RandomResize([800], max_size=1333), original.ToTensor(),
                                  original.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    rng = np.random.default_rng(0)
    for height, width in ((1024, 1024), (900, 1600)):  # MVTec AD's size; one capped by the long side
        image = Image.fromarray((rng.random((height // 16, width // 16, 3)) * 255).astype(np.uint8)).resize((width, height))
        expected, _ = transform(image, None)
        ours = detector.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == expected.shape
        difference = (ours - expected).abs()
        assert difference.max() <= 1 / 255 / 0.224 + 1e-5 and difference.mean() < 1e-4


@pytest.mark.parametrize("name, release", [("GroundingDINO_SwinT_OGC", "groundingdino-swint-ogc"),
                                           ("GroundingDINO_SwinB_cfg", "groundingdino-swinb-cogcoor")])
def test_full_size_keys_all_map(reference, name, release):
    """Every key of a full-size original model lands on a transformers key of the same shape, and none is left."""
    shapes = json.loads((reference / "reference.json").read_text())["full_size_keys"][name]
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert original_config_from_state(state) == ORIGINAL_CONFIGS[name]
    from transformers import BertConfig, GroundingDinoForObjectDetection

    with torch.device("meta"):
        model = GroundingDinoForObjectDetection(hf_config(original_config_from_state(state), BertConfig()))
    check_against_model(convert_state(state), model.state_dict(), name)
    size = next(entry.size for entry in load_manifest() if entry.name == release)
    if size:  # the released file holds these tensors as float32: its pinned size says so within 1 %
        assert 4 * sum(value.numel() for value in state.values()) == pytest.approx(size, rel=0.01)


@pytest.mark.parametrize("name, backbone, window, image_size", [
    ("GroundingDINO_SwinT_OGC", "swin_T_224_1k", 7, 224), ("GroundingDINO_SwinB_cfg", "swin_B_384_22k", 12, 384),
])
def test_presets_follow_the_original_config_files(name, backbone, window, image_size):
    if find_spec("groundingdino") is None:
        pytest.skip("needs groundingdino-py")
    from transformers import BertConfig

    original = runpy.run_path(str(Path(find_spec("groundingdino").origin).parent / "config" / f"{name}.py"))
    preset = ORIGINAL_CONFIGS[name]
    assert original["backbone"] == backbone and preset.backbone == SWIN_BACKBONES[backbone]
    for field in ("hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward", "num_queries", "num_feature_levels",
                  "enc_n_points", "dec_n_points", "max_text_len", "two_stage_bbox_embed_share", "dec_pred_bbox_embed_share",
                  "embed_init_tgt", "transformer_activation"):
        assert getattr(preset, field) == original[field], field
    assert preset.return_interm_indices == tuple(original["return_interm_indices"])
    assert preset.pe_temperature == original["pe_temperatureH"] == original["pe_temperatureW"]
    config = hf_config(preset, BertConfig())
    assert (config.d_model, config.num_queries, config.encoder_layers, config.decoder_layers) == (256, 900, 6, 6)
    assert (config.backbone_config.window_size, config.backbone_config.image_size) == (window, image_size)
    assert config.backbone_config.out_indices == [2, 3, 4] and config.text_config.hidden_size == 768


def test_wrong_checkpoints_give_one_line_errors(reference, weights_dir, tmp_path, capsys):
    bert = reference / "bert"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((reference / "tiny.pth").read_bytes()[:100_000])
    released = torch.load(reference / "tiny.pth", weights_only=True)["model"]
    incomplete, foreign = tmp_path / "incomplete.pth", tmp_path / "foreign.pth"
    torch.save({"model": {k: v for k, v in released.items() if k != "module.transformer.tgt_embed.weight"}}, incomplete)
    torch.save({"model": {**released, "module.transformer.extra_head.weight": torch.zeros(1)}}, foreign)
    for path, message in ((weights_dir / "demo" / "sam_demo.pth", "is not an original Grounding DINO checkpoint"),
                          (truncated, "cannot read Grounding DINO checkpoint"),
                          (incomplete, "is not a complete Grounding DINO checkpoint: no 'transformer.tgt_embed.weight'"),
                          (foreign, "unknown key in the Grounding DINO checkpoint: transformer.extra_head.weight")):
        copy = tmp_path / "w" / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(path, copy)
        shutil.copytree(bert, copy.parent / "bert-base-uncased", dirs_exist_ok=True)
        with pytest.raises(WeightsError, match=message) as error:
            load_detector("hf-grounding-dino", copy, torch.device("cpu"))
        assert "\n" not in str(error.value)
        assert not copy.with_name(copy.name + ".hf").exists() and not copy.with_name(copy.name + ".hf.partial").exists()
        capsys.readouterr()
        assert main(["weights", "convert-groundingdino", str(copy), "--bert", str(bert), "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1

    lonely = tmp_path / "alone" / "groundingdino_swint_ogc.pth"  # no BERT directory beside it
    lonely.parent.mkdir()
    shutil.copy(reference / "tiny.pth", lonely)
    with pytest.raises(WeightsError, match="needs BERT's config and vocabulary at .*alone/bert-base-uncased"):
        load_detector("hf-grounding-dino", lonely, torch.device("cpu"))

    shuffled = tmp_path / "shuffled-bert"  # "." moved off bert-base-uncased's id 1012
    shutil.copytree(bert, shuffled)
    vocab = (shuffled / "vocab.txt").read_text().splitlines()
    vocab[1012], vocab[200] = vocab[200], vocab[1012]
    (shuffled / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (shuffled / "tokenizer.json").unlink(missing_ok=True)  # the fast tokenizer is rebuilt from vocab.txt
    assert main(["weights", "convert-groundingdino", str(lonely), "--bert", str(shuffled), "-o", str(tmp_path / "x")]) == 2
    assert "expects bert-base-uncased's [101, 102, 1012, 1029]" in capsys.readouterr().err


def test_reads_the_released_layout_with_training_arguments(tmp_path):
    """{"model": ..., "args": Namespace} with "module." prefixes reads as the bare state dict, with no code run."""
    import argparse

    state = {name: torch.zeros(2) for name in ("backbone.0.patch_embed.proj.weight", "transformer.level_embed",
                                                "bert.embeddings.word_embeddings.weight")}
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "args": argparse.Namespace(lr=1e-4), "epoch": 3},
               tmp_path / "released.pth")
    assert read_original_state(tmp_path / "released.pth").keys() == state.keys()


def test_cli_converts_to_a_directory_the_detector_loads(reference, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["weights", "convert-groundingdino", str(reference / "tiny.pth"), "--bert", str(reference / "bert"),
                 "-o", str(out)]) == 0
    assert "wrote a transformers Grounding DINO directory" in capsys.readouterr().out
    detector = load_detector("hf-grounding-dino", out, torch.device("cpu"))
    assert detector.model.config.num_queries == 30 and detector.model.config.backbone_config.depths == [1, 1, 2, 1]


def test_pipeline_finds_and_uses_the_original_checkpoint(reference, weights, weights_dir, detector):
    """A weights dir with only the original .pth (and BERT) as detector: the pipeline picks it up and segments."""
    from iapas import Pipeline
    from iapas.weights.manifest import find_weights

    (weights / "demo").mkdir(exist_ok=True)
    shutil.copy(weights_dir / "demo" / "sam_demo.pth", weights / "demo" / "sam_demo.pth")
    assert find_weights("detector", weights)[1] == weights / "groundingdino_swint_ogc.pth"
    assert find_weights("text-encoder", weights)[1] == weights / "bert-base-uncased"
    pipe = Pipeline.from_pretrained(weights)
    result = pipe.segment(reference / "image.png", prompts=PROMPTS)
    assert result.anomaly_map.shape == (100, 1333)
    assert len(result.boxes) > 0 and pipe.detector.model_id == "grounding-dino:groundingdino_swint_ogc.pth.hf"
