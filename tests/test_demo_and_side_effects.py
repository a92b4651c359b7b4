"""The demo detector reads its prompts, and library calls leave process-wide state (matplotlib, transformers, torch) alone."""
import numpy as np
import pytest
import torch

from iapas.weights.manifest import MANIFEST_PATH, find_weights, load_manifest

REPO = MANIFEST_PATH.parents[2]


@pytest.fixture(scope="module")
def demo_processor_and_model(weights_dir):
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    path = find_weights("detector", weights_dir)[1]
    return AutoProcessor.from_pretrained(path), GroundingDinoForObjectDetection.from_pretrained(path).eval()


def test_demo_tokenizer_spells_the_prompt_words(demo_processor_and_model):
    from iapas.weights.demo import shipped_words

    tokenizer = demo_processor_and_model[0].tokenizer
    assert tokenizer.vocab_size == len(tokenizer.get_vocab()) > 200
    for word in ("scratch", "crack", "washer", "abnormal", "defect", "rust", "contamination"):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(word)] and ids != [tokenizer.unk_token_id], word
    # words outside the vocabulary are spelled with WordPiece pieces, never [UNK]
    pieces = tokenizer.tokenize("zqxv")
    assert pieces == ["z", "##q", "##x", "##v"]
    assert all(tokenizer.convert_tokens_to_ids(w) != tokenizer.unk_token_id for w in shipped_words())


def test_different_prompts_change_the_demo_detectors_logits(demo_processor_and_model):
    processor, model = demo_processor_and_model
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    logits = {}
    for prompt in ("scratch .", "washer .", "scratch ."):
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits.setdefault(prompt, []).append(model(**inputs).logits)
    assert torch.equal(*logits["scratch ."])  # deterministic
    assert not torch.allclose(logits["scratch ."][0], logits["washer ."][0], atol=1e-5)


def test_one_manifest_shipped_in_the_package():
    assert MANIFEST_PATH.is_file() and not MANIFEST_PATH.is_symlink()
    assert not (REPO / "weights" / "manifest.toml").exists()
    assert "manifest.toml" not in (REPO / ".gitignore").read_text()
    entry = load_manifest()[0]
    assert "iapas/resources/manifest.toml" in entry.where_to_get()


def test_pr_curve_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from iapas.evaluation.metrics import PixelMetrics
    from iapas.evaluation.reports import write_pr_curve

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        pixels = PixelMetrics(bins=16)
        pixels.update(np.array([[0.1, 0.9]]), np.array([[False, True]]))
        write_pr_curve(pixels, tmp_path / "curve.png", "t")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        matplotlib.use(before)


def test_loading_models_restores_transformers_progress_bars(weights_dir):
    from transformers.utils import logging as transformers_logging

    from iapas.backends import load_detector

    transformers_logging.enable_progress_bar()
    load_detector("hf-grounding-dino", find_weights("detector", weights_dir)[1], torch.device("cpu"))
    assert transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    load_detector("hf-grounding-dino", find_weights("detector", weights_dir)[1], torch.device("cpu"))
    assert not transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()


def test_demo_builders_leave_the_global_torch_seed_alone(tmp_path):
    from iapas.weights.demo import build_demo_sam_checkpoint

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_demo_sam_checkpoint(tmp_path / "sam.pth", seed=0)
    assert torch.equal(torch.rand(3), expected)
    from iapas.weights.demo import build_demo_ram

    torch.manual_seed(5)
    build_demo_ram(tmp_path / "ram.pth", seed=0)
    assert torch.equal(torch.rand(3), expected)
