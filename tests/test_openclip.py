"""open_clip checkpoints: converted into transformers' CLIPModel with identical image and text features."""
import json
from pathlib import Path

import pytest
import torch

import open_clip  # installed by `make test`; optional for users

from iapas.backends.openclip_convert import CONVERTER_VERSION, convert_openclip_checkpoint, write_clip_tokenizer_from_bpe  # noqa: E402
from iapas.backends.clip import ClipBackbone  # noqa: E402
from iapas.cli import main  # noqa: E402
from iapas.errors import WeightsError  # noqa: E402
from iapas.weights.manifest import find_weights, sha256_of  # noqa: E402


@pytest.fixture(scope="module")
def tiny_openclip(weights_dir, tmp_path_factory):
    """A tiny open_clip CLIP built with open_clip's own classes, saved as open_clip saves it."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    tokenizer_dir = find_weights("clip", weights_dir)[1]  # the demo CLIP's tiny tokenizer: the wrong one here
    torch.manual_seed(0)
    # one 64-wide head per layer: open_clip's head width, which the conversion assumes by default
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))  # no zero biases hiding a mix-up
    path = tmp_path_factory.mktemp("openclip") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, path, tokenizer_dir


def test_conversion_reproduces_open_clip_features(tiny_openclip, tmp_path):
    model, checkpoint, _ = tiny_openclip
    copy = tmp_path / "ViT-tiny.pt"
    copy.write_bytes(checkpoint.read_bytes())
    backbone = ClipBackbone(copy)  # a checkpoint file is converted on first use into ViT-tiny.pt.hf/
    assert (tmp_path / "ViT-tiny.pt.hf" / "config.json").is_file()
    pixels = torch.rand(2, 3, 32, 32)
    ids = open_clip.tokenize(["a photo of a washer.", "damaged object."])
    with torch.no_grad():
        image_reference, text_reference = model.encode_image(pixels), model.encode_text(ids)
        image_ours = backbone.encode_tokens(backbone.tokens(pixels))[0]
        text_ours = backbone.clip.get_text_features(input_ids=ids)
    torch.testing.assert_close(image_ours, image_reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(getattr(text_ours, "pooler_output", text_ours), text_reference, atol=1e-5, rtol=1e-5)
    assert backbone.clip.logit_scale.item() == pytest.approx(model.logit_scale.item())


def test_bpe_tokenizer_matches_open_clips(tmp_path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer_from_bpe(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", tmp_path)
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert len(tokenizer) == 49408
    for sentence in ("a photo of a damaged metal nut.", "A close-up photo of the flawless carpet without defect."):
        ours = tokenizer(sentence)["input_ids"]
        theirs = open_clip.tokenize([sentence])[0]
        assert ours == theirs[: len(ours)].tolist() and theirs[len(ours):].eq(0).all()


def test_cli_convert_and_errors(capsys, tiny_openclip, tmp_path):
    _, checkpoint, tokenizer_dir = tiny_openclip
    assert main(["weights", "convert-openclip", str(checkpoint), "-o", str(tmp_path / "c")]) == 0
    assert ClipBackbone(tmp_path / "c").grid == 4
    capsys.readouterr()
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(1)}, foreign)
    assert main(["weights", "convert-openclip", str(foreign), "-o", str(tmp_path / "d")]) == 2
    assert "not an open_clip ViT checkpoint" in capsys.readouterr().err
    with pytest.raises(WeightsError, match="tokenizer has 88 tokens but .* embeds 49408"):
        convert_openclip_checkpoint(checkpoint, tmp_path / "e", tokenizer_dir)


def quick_gelu_openai_file(folder: Path, seed: int = 0, vision_head_width: int = 64) -> tuple[torch.nn.Module, Path]:
    """A tiny QuickGELU CLIP (open_clip's classes) saved as OpenAI's state dict: the tensors plus its three integers.

    OpenAI's heads are 64 wide; with `vision_head_width` 32 the towers' heads differ (vision 4 x 32, text 1 x 64).
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(embed_dim=16, quick_gelu=True,
                 vision_cfg=CLIPVisionCfg(layers=2, width=128, head_width=vision_head_width, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    state = dict(model.state_dict())
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = folder / "ViT-tiny-openai.pt"
    torch.save(state, path)
    return model, path


def features(model_or_backbone, pixels, ids):
    """Projected image and text features of open_clip's model or of a converted backbone."""
    with torch.no_grad():
        if isinstance(model_or_backbone, ClipBackbone):
            text = model_or_backbone.clip.get_text_features(input_ids=ids)
            return model_or_backbone.encode_tokens(model_or_backbone.tokens(pixels))[0], getattr(text, "pooler_output", text)
        return model_or_backbone.encode_image(pixels), model_or_backbone.encode_text(ids)


def test_openai_file_converts_with_quick_gelu_and_stale_conversions_are_redone(tmp_path, capsys):
    model, path = quick_gelu_openai_file(tmp_path)
    pixels, ids = torch.rand(2, 3, 32, 32), open_clip.tokenize(["a photo of a washer.", "damaged object."])
    reference = features(model, pixels, ids)
    from iapas.backends.openclip_convert import convert_openclip_checkpoint as convert

    convert(path, tmp_path / "stale", activation="gelu")  # what the automatic conversion made before
    target = tmp_path / "ViT-tiny-openai.pt.hf"
    (tmp_path / "stale").rename(target)  # a cached GELU conversion, without a record: it must not survive
    backbone = ClipBackbone(path)
    assert backbone.clip.config.vision_config.hidden_act == "quick_gelu" == backbone.clip.config.text_config.hidden_act
    for ours, theirs in zip(features(backbone, pixels, ids), reference):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)  # float32 sums in another order
    record = json.loads((target / "iapas_conversion.json").read_text())
    assert record["converter_version"] == CONVERTER_VERSION and record["sha256"] == sha256_of(path)
    assert "converter changed" in capsys.readouterr().err
    ClipBackbone(path)  # unchanged: reused, no new conversion
    assert "converting" not in capsys.readouterr().err
    other, _ = quick_gelu_openai_file(tmp_path, seed=1)  # the same name, other weights
    for ours, theirs in zip(features(ClipBackbone(path), pixels, ids), features(other, pixels, ids)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert "the file changed" in capsys.readouterr().err
    assert not (tmp_path / "ViT-tiny-openai.pt.hf.partial").exists()


def test_open_clip_file_keeps_gelu_and_head_widths_are_per_tower(tiny_openclip, tmp_path, capsys):
    _, checkpoint, _ = tiny_openclip
    from iapas.backends.openclip_convert import checkpoint_family, read_openclip_state

    assert checkpoint_family(read_openclip_state(checkpoint)) == "open_clip"
    model, path = quick_gelu_openai_file(tmp_path, vision_head_width=32)
    assert checkpoint_family(read_openclip_state(path)) == "openai"
    pixels, ids = torch.rand(1, 3, 32, 32), open_clip.tokenize(["a photo of a nut."])
    assert main(["weights", "convert-openclip", str(path), "-o", str(tmp_path / "per-tower"),
                 "--vision-head-width", "32", "--text-head-width", "64"]) == 0
    for ours, theirs in zip(features(ClipBackbone(tmp_path / "per-tower"), pixels, ids), features(model, pixels, ids)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    assert main(["weights", "convert-openclip", str(path), "-o", str(tmp_path / "bad"), "--head-width", "48"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "the vision tower is 128 wide" in error and "Traceback" not in error


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # tracing the test model, not iapas
def test_openai_torchscript_archive_is_read_and_gets_quick_gelu(tmp_path):
    """OpenAI's released ViT-*.pt are TorchScript archives: read through torch.jit, family openai."""
    model, _ = quick_gelu_openai_file(tmp_path, seed=2)
    pixels, ids = torch.rand(1, 3, 32, 32), open_clip.tokenize(["a photo of a screw."])
    archive = tmp_path / "ViT-traced.pt"
    torch.jit.trace(model, (pixels, ids), check_trace=False).save(str(archive))
    for ours, theirs in zip(features(ClipBackbone(archive), pixels, ids), features(model, pixels, ids)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
