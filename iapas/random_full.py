"""Full-size models with random weights, saved in the real formats, for timing without real weights.

Compute does not depend on weight values, so Grounding DINO-T (Swin-T, BERT-base, 900 queries, 6+6
layers: transformers' default GroundingDinoConfig, the architecture of IDEA-Research/grounding-dino-tiny)
and SAM ViT-B built with random weights take the real time. They are written once into a cache folder
and loaded through the same loaders as real weights; their outputs are meaningless and say so.
"""
from __future__ import annotations

from pathlib import Path

import torch

RANDOM_NOTE = "Full-size RANDOM weights built by `iapas bench --random-full` for timing: their output is meaningless.\n"
DETECTOR_DIR = "grounding-dino-tiny-random"
SEGMENTER_FILE = "sam_vit_b_random.pth"


def default_cache() -> Path:
    """~/.cache/iapas/random-full (IAPAS_CACHE overrides ~/.cache/iapas)."""
    import os

    return Path(os.environ.get("IAPAS_CACHE", Path.home() / ".cache" / "iapas")) / "random-full"


def build_random_grounding_dino_tiny(directory: Path, seed: int = 0) -> Path:
    """Grounding DINO-T with random weights, its processor (800 px shortest edge) and a WordPiece tokenizer."""
    from transformers import (BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor)
    from transformers.utils import logging as transformers_logging

    from .demo_weights import write_demo_vocab

    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    write_demo_vocab(partial / "vocab.txt")
    tokenizer = BertTokenizerFast(vocab_file=str(partial / "vocab.txt"), do_lower_case=True)
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()  # the defaults are Swin-T / BERT-base
    transformers_logging.disable_progress_bar()
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    (partial / "DEMO_WEIGHTS").write_text(RANDOM_NOTE, encoding="utf-8")
    partial.rename(directory)  # complete or absent: an interrupted build is redone
    return directory


def build_random_sam_vit_b(path: Path, seed: int = 0) -> Path:
    """segment_anything's ViT-B with random weights, as a .pth state dict like Meta's."""
    from segment_anything import sam_model_registry

    from .files import atomic_write

    torch.manual_seed(seed)
    state = sam_model_registry["vit_b"](checkpoint=None).state_dict()
    atomic_write(path, lambda temporary: torch.save(state, temporary))
    path.with_name(path.name + ".DEMO_WEIGHTS").write_text(RANDOM_NOTE, encoding="utf-8")
    return path


def random_full_models(cache: Path | None = None) -> tuple[Path, Path]:
    """(detector dir, segmenter file) of the full-size random models, built on first use."""
    cache = Path(cache) if cache else default_cache()
    detector, segmenter = cache / DETECTOR_DIR, cache / SEGMENTER_FILE
    if not (detector / "config.json").is_file():
        build_random_grounding_dino_tiny(detector)
    if not segmenter.is_file():
        build_random_sam_vit_b(segmenter)
    return detector, segmenter
