"""The reference side of tests/test_groundingdino_convert.py: IDEA-Research's Grounding DINO (groundingdino-py).

Run in a subprocess with a transformers 4.x first on PYTHONPATH (groundingdino-py's BertModelWarper needs
BertModel.get_extended_attention_mask, which transformers 5 removed). It builds a tiny model from the
original SwinT-OGC config with random weights and a tiny local BERT, saves it as the released files are
saved, runs the original inference on one image and caption, and lists the keys of full-size SwinT-OGC
and SwinB models. Usage: python groundingdino_reference.py OUT_DIR
"""
from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import groundingdino
from groundingdino.models import build_model
from groundingdino.models.GroundingDINO import groundingdino as gd_module
from groundingdino.models.GroundingDINO.backbone import backbone as backbone_module
from groundingdino.util.inference import load_image, predict
from groundingdino.util.slconfig import SLConfig
from transformers import BertConfig, BertModel, BertTokenizer, BertTokenizerFast

CAPTION = "scratch . dent . washer ."
# hidden_dim stays 256: the original hard-codes 256 sine features for the text positions (transformer.py)
TINY = dict(hidden_dim=256, dim_feedforward=64, enc_layers=2, dec_layers=2, num_queries=30)
TINY_SWIN = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])  # window 7, as swin_T_224_1k


def original_args(text_encoder: str, config_name: str = "GroundingDINO_SwinT_OGC", **overrides):
    """A released config file, with overrides."""
    args = SLConfig.fromfile(os.path.join(os.path.dirname(groundingdino.__file__), "config", f"{config_name}.py"))
    args.device, args.text_encoder_type = "cpu", text_encoder
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def write_tiny_bert(directory: Path) -> None:
    """A small BERT with a real WordPiece vocabulary: the prompt words whole, any other word spelled by letters.

    [CLS], [SEP], "." and "?" keep their bert-base-uncased ids (101, 102, 1012, 1029): transformers' Grounding
    DINO finds the sub-sentence boundaries by those ids, the original by asking its tokenizer.
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab = [f"[unused{index}]" for index in range(1100)]
    for index, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1010: ",", 1012: ".", 1029: "?"}.items():
        vocab[index] = token
    words = ["scratch", "dent", "crack", "washer"] + list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab[200:200 + len(words)] = words
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(directory)


def tiny_model(bert_dir: Path):
    """The original model with a tiny Swin (build_swin_transformer lets keyword arguments override its table)."""
    build_swin = backbone_module.build_swin_transformer
    backbone_module.build_swin_transformer = lambda name, **kw: build_swin(name, **{**kw, **TINY_SWIN})
    try:
        torch.manual_seed(0)
        model = build_model(original_args(str(bert_dir), **TINY))
    finally:
        backbone_module.build_swin_transformer = build_swin
    with torch.no_grad():
        # Every tensor different from its neighbours, so that a swapped or dropped key changes the outputs...
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        # ...and, as REFERENCES.md says, logits that do not saturate and boxes that differ: smaller output norms,
        # a random last box layer (zero at initialisation).
        for norm in (model.transformer.enc_output_norm, model.transformer.decoder.norm):
            norm.weight.mul_(0.05)
            norm.bias.mul_(0.05)
        for head in (model.bbox_embed[0], model.transformer.enc_out_bbox_embed):
            head.layers[-1].weight.normal_(0, 0.2)
    return model.eval()


def border_model(model):
    """The tiny model with its box head pushed towards the right and bottom edges and towards full-frame sizes.

    The box head is shared by every decoder layer (dec_pred_bbox_embed_share); with large deltas some reference
    points reach within 1e-3 of 1 in one layer and are pulled back by the next, where the original's inverse
    sigmoid (eps 1e-3) and transformers' logit (eps 1e-5) give different boxes; boxes reach past the image,
    where clamping starts to matter.
    """
    with torch.no_grad():
        last = model.bbox_embed[0].layers[-1]
        last.weight.mul_(4)  # deltas of several units either way: a box saturated by one layer is pulled back by the next
        last.bias += torch.tensor([3.0, 3.0, 4.0, 4.0])
    return model


def full_size_keys(config_name: str, tokenizer_dir: Path) -> dict[str, list[int]]:
    """Key -> shape of a full-size model of an original config (bert-base-uncased built from its config, random weights).

    The tokenizer is only asked for its special tokens' ids here, so the tiny one stands in.
    """
    loader = gd_module.get_tokenlizer
    saved = loader.get_tokenlizer, loader.get_pretrained_language_model
    loader.get_tokenlizer = lambda name: BertTokenizerFast.from_pretrained(str(tokenizer_dir))
    loader.get_pretrained_language_model = lambda name: BertModel(BertConfig())  # BertConfig() is bert-base-uncased's
    try:
        model = build_model(original_args("bert-base-uncased", config_name))
    finally:
        loader.get_tokenlizer, loader.get_pretrained_language_model = saved
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def main(out: Path) -> None:
    write_tiny_bert(out / "bert")
    model = tiny_model(out / "bert")
    # the layout of groundingdino_swint_ogc.pth: {"model": state dict of the DistributedDataParallel wrapper}
    torch.save({"model": {"module." + key: value for key, value in model.state_dict().items()}}, out / "tiny.pth")

    rng = np.random.default_rng(0)
    image = (rng.random((5, 43, 3)) * 255).astype(np.uint8)
    # 100 x 1333: the original resize (short side 800, long side at most 1333) leaves it as it is, and it is
    # a sixth of the pixels of an 800 px image
    image = np.kron(image, np.ones((20, 31, 1), dtype=np.uint8))
    Image.fromarray(image).save(out / "image.png")
    _, pixels = load_image(str(out / "image.png"))
    captured = {}
    forward = model.forward
    model.forward = lambda *args, **kwargs: captured.setdefault("outputs", forward(*args, **kwargs))  # predict's raw outputs
    boxes, scores, phrases = predict(model, pixels, CAPTION, box_threshold=0.0, text_threshold=0.5, device="cpu")
    outputs = captured["outputs"]
    tokens = model.tokenizer(CAPTION)["input_ids"]
    np.savez(
        out / "reference.npz", pixels=pixels.numpy(), input_ids=np.array(tokens),
        logits=outputs["pred_logits"][0, :, : len(tokens)].numpy(), boxes=outputs["pred_boxes"][0].numpy(),
        predict_boxes=boxes.numpy(), predict_scores=scores.numpy(),
    )
    border = border_model(model)
    torch.save({"model": {"module." + key: value for key, value in border.state_dict().items()}}, out / "border.pth")
    captured.clear()
    border_boxes, border_scores, _ = predict(border, pixels, CAPTION, box_threshold=0.0, text_threshold=0.5, device="cpu")
    np.savez(out / "border.npz", logits=captured["outputs"]["pred_logits"][0, :, : len(tokens)].numpy(),
             boxes=captured["outputs"]["pred_boxes"][0].numpy(), predict_boxes=border_boxes.numpy(),
             predict_scores=border_scores.numpy())
    (out / "reference.json").write_text(json.dumps({"phrases": phrases, "caption": CAPTION, "full_size_keys": {
        name: full_size_keys(name, out / "bert") for name in ("GroundingDINO_SwinT_OGC", "GroundingDINO_SwinB_cfg")
    }}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
