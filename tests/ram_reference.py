"""The reference side of tests/test_ram.py: recognize-anything's own RAM and RAM++, built with random weights.

Run in a subprocess, from a copy of the reference source (PYTHONDONTWRITEBYTECODE=1), with fairscale on
PYTHONPATH (`ram/models/vit.py` imports it; `make install` puts it in <venv>/reference-fairscale).
Usage: python ram_reference.py REFERENCE_COPY OUT_DIR

The copy's Swin-L 384 config is made tiny (same window, image size and layout; fewer, narrower layers) and
its caption BERT gets 2 layers instead of 12; the tagging head keeps its real config (q2l_config.json) and
the tokenizer a vocabulary of the real size (30522 tokens, written here: nothing is downloaded), so every
tagging tensor has the released shape. Writes ram.pth and ram_plus.pth as the releases are saved
({"model": state dict, ...}), image.png, and per model the logits (from a hook on `fc`, the reference's own
forward) and the English tags `inference_ram` returns.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

TINY_SWIN = {"vision_width": 96, "image_res": 384, "window_size": 12, "embed_dim": 12,
             "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}
VOCAB_SIZE = 30522  # bert-base-uncased, the tokenizer RAM builds (ram/models/utils.py init_tokenizer)
TAG_FRACTION = 0.01  # fc's bias is moved so that about this share of the tags pass their thresholds


def shim_transformers() -> None:
    """Put back the helpers `ram/models/bert.py` imports from transformers.modeling_utils (this process only).

    Later 4.x releases moved two of them to transformers.pytorch_utils and dropped the third, which bert.py
    imports and never calls.
    """
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    def find_pruneable_heads_and_indices(*args, **kwargs):  # imported by bert.py, never called for tagging
        raise NotImplementedError

    modeling_utils.apply_chunking_to_forward = pytorch_utils.apply_chunking_to_forward
    modeling_utils.prune_linear_layer = pytorch_utils.prune_linear_layer
    modeling_utils.find_pruneable_heads_and_indices = find_pruneable_heads_and_indices


def write_vocabulary(directory: Path) -> None:
    """A WordPiece vocabulary of the real size: BERT's special tokens at their ids, the prompt's words, fillers."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = [f"[unused{i}]" for i in range(VOCAB_SIZE)]
    for index, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}.items():
        vocab[index] = token
    vocab[1000:1003] = ["a", "picture", "of"]  # ram.py tokenizes its prompt "a picture of "
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")


def make_tiny(copy: Path, out: Path) -> Path:
    """Tiny Swin config in the copy; a 2-layer caption BERT config beside it; returns that config's path."""
    (copy / "ram" / "configs" / "swin" / "config_swinL_384.json").write_text(json.dumps(TINY_SWIN))
    med = json.loads((copy / "ram" / "configs" / "med_config.json").read_text())
    med["num_hidden_layers"] = 2  # the tagging head is tied to the tag encoder's first 2 layers (ram.py)
    (out / "med_config.json").write_text(json.dumps(med))
    return out / "med_config.json"


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter (the released init leaves label_embed zero: all tags would tie)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == "reweight_scale":
                continue  # keep RAM++'s log(1/0.07)
            noise = torch.randn(parameter.shape, generator=generator)
            if name == "label_embed":
                parameter.copy_(noise)
            elif "norm" in name.lower() and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.05 * noise)


def run(model, image_tensor) -> tuple[np.ndarray, str]:
    """The logits (captured at fc) and the English tags of the reference's inference."""
    from ram import inference_ram

    def keep(module, args, output):
        model._captured = output.squeeze(-1)[0].numpy()

    hook = model.fc.register_forward_hook(keep)
    try:
        english, _ = inference_ram(image_tensor, model)
    finally:
        hook.remove()
    return model._captured, english


def subset_logits(model, image_tensor, count: int = 256) -> np.ndarray:
    """The logits of the first `count` tags only, cheaply (the full head is the expensive part).

    The model is given the first tags' label embeddings for one call; the hook on `fc` keeps the logits,
    and the thresholding that follows, which expects every tag, is expected to fail and is skipped.
    """
    full, classes = model.label_embed, model.num_class
    per_class = full.shape[0] // classes
    model.label_embed, model.num_class = torch.nn.Parameter(full[: count * per_class]), count
    try:
        run(model, image_tensor)
    except (KeyError, RuntimeError, IndexError):
        pass
    finally:
        captured = getattr(model, "_captured", None)
        model.label_embed, model.num_class = full, classes
    return captured


def build_and_run(name: str, factory, med_config: Path, vocab: Path, image_tensor, out: Path, seed: int) -> None:
    kwargs = {"image_size": 384, "vit": "swin_l", "text_encoder_type": str(vocab)}
    if name == "ram":
        kwargs["med_config"] = str(med_config)
    torch.manual_seed(seed)
    model = factory(**kwargs).eval()
    randomise(model, seed)
    # move fc's bias so that a few tags pass: the logit minus logit(threshold) at the (1 - TAG_FRACTION)
    # quantile, estimated on the first tags
    logits = torch.from_numpy(subset_logits(model, image_tensor))
    margin = logits - torch.logit(model.class_threshold[: len(logits)])
    with torch.no_grad():
        model.fc.bias -= torch.quantile(margin, 1 - TAG_FRACTION)
    logits, english = run(model, image_tensor)
    torch.save({"model": model.state_dict(), "config": {"image_size": 384, "vit": "swin_l"}, "epoch": 4}, out / f"{name}.pth")
    np.save(out / f"{name}_logits.npy", logits)
    (out / f"{name}_tags.json").write_text(json.dumps({"english": english, "keys": len(model.state_dict())}))


def main(copy: Path, out: Path) -> None:
    shim_transformers()
    sys.path.insert(0, str(copy))
    med_config = make_tiny(copy, out)
    write_vocabulary(out / "vocab")
    from PIL import Image

    from ram import get_transform
    from ram.models import ram, ram_plus

    rng = np.random.default_rng(7)
    pixels = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    pixels[60:180, 80:240] = [200, 120, 40]  # a block of colour, so the image is not pure noise
    Image.fromarray(pixels).save(out / "image.png")
    image_tensor = get_transform(image_size=384)(Image.open(out / "image.png")).unsqueeze(0)
    np.save(out / "pixels.npy", image_tensor[0].numpy())
    with torch.no_grad():
        build_and_run("ram", ram, med_config, out / "vocab", image_tensor, out, seed=3)
        build_and_run("ram_plus", ram_plus, med_config, out / "vocab", image_tensor, out, seed=4)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
