"""Tiny randomly initialised models with the real architectures, saved in the real on-disk formats.

`iapas weights make-demo` and the tests use them: they prove loading, wiring, shapes and file
formats end to end. Their outputs are meaningless by construction.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from .backends.sam import SamGeometry, build_sam

DEMO_NOTE = "Random demo weights built by `iapas weights make-demo`: their output is meaningless.\n"
DEMO_WORDS = (
    "a the of and in on with abnormal defect crack scratch hole stain dent cut tear missing "
    "broken bent contamination fabric metal wood glass plastic leather tile carpet grid screw bottle object"
).split()


def write_demo_vocab(path: Path) -> None:
    """A WordPiece vocabulary that spells any lower-case word from characters, plus a few whole words."""
    letters = list(string.ascii_lowercase + string.digits)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", "'", "(", ")", "/"]
    tokens += letters + [f"##{c}" for c in letters] + DEMO_WORDS
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")


def build_demo_grounding_dino(directory: Path, image_size: int = 128, seed: int = 0) -> Path:
    """Save a tiny GroundingDinoForObjectDetection with its processor (BERT tokenizer) to `directory`."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_vocab(directory / "vocab.txt")
    # transformers 5 reads the vocabulary from `vocab` (its old `vocab_file` keyword is ignored: every word became [UNK])
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=image_size,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=256,
        ),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=30, max_text_len=256,
        encoder_n_points=2, decoder_n_points=2, use_timm_backbone=False, backbone=None,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    transformers_logging.disable_progress_bar()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


DEMO_SAM_GEOMETRY = SamGeometry(
    embed_dim=32, depth=2, num_heads=2, patch_size=16, image_size=256, window_size=4, global_attn_indexes=(1,),
    mlp_ratio=2.0, prompt_dim=32, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)


def build_demo_sam_checkpoint(path: Path, seed: int = 0, geometry: SamGeometry = DEMO_SAM_GEOMETRY) -> Path:
    """Save a tiny segment_anything Sam state dict as a .pth file, as Meta's checkpoints are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_sam(geometry).state_dict(), path)
    return path


def build_demo_hf_sam(directory: Path, seed: int = 0) -> Path:
    """Save a tiny transformers SamModel with its processor to `directory`."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    directory = Path(directory)
    config = SamConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, output_channels=16, image_size=256,
            mlp_dim=64, global_attn_indexes=[1], window_size=4, num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=256, image_embedding_size=16),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16),
    )
    torch.manual_seed(seed)
    transformers_logging.disable_progress_bar()
    SamModel(config).eval().save_pretrained(directory)
    image_processor = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    SamProcessor(image_processor=image_processor).save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


def build_demo_clip(directory: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny transformers CLIPModel with a character-level BPE tokenizer to `directory`."""
    import json

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    characters = list(string.ascii_lowercase + string.digits + ".,'-/()")
    vocab = {token: index for index, token in enumerate(characters + [f"{c}</w>" for c in characters])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    transformers_logging.disable_progress_bar()
    CLIPModel(config).eval().save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


def make_demo_weights(weights_dir: Path) -> list[Path]:
    """Write the demo detector, segmenter and CLIP where the manifest's demo entries expect them."""
    from .weights import load_manifest

    builders = {"grounding-dino-demo": build_demo_grounding_dino, "sam-demo": build_demo_sam_checkpoint, "clip-demo": build_demo_clip}
    written = []
    for entry in load_manifest():
        if entry.demo and entry.name in builders:
            written.append(builders[entry.name](entry.location(Path(weights_dir))))
    return written
