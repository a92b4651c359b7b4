"""Full-size models with random weights, saved in the real formats, for timing without real weights.

Compute does not depend on weight values, so Grounding DINO-T (Swin-T, BERT-base, 900 queries, 6+6
layers: transformers' default GroundingDinoConfig, the architecture of IDEA-Research/grounding-dino-tiny)
and SAM ViT-B built with random weights take the real time. They are written once into a cache folder
and loaded through the same loaders as real weights; their outputs are meaningless and say so. With
the fast profile (`--profile fast --random-full`) SAM 2.1 Hiera-T, EdgeTAM or OmDet-Turbo are built
instead, from transformers' default configs (the released architectures).
"""
from __future__ import annotations

from pathlib import Path

import torch

RANDOM_NOTE = "Full-size RANDOM weights built by `iapas bench --random-full` for timing: their output is meaningless.\n"
# Random weights saturate Grounding DINO's scores (median box score 0.5 to 1.0), so 170 to 340 boxes per image pass
# any threshold where real weights keep a handful; `iapas bench --random-full` caps each image at this many boxes
# (`--max-boxes`, applied alike to iapas and the naive loop) unless told otherwise, so masking is timed at a
# realistic load (the "decoding 10 boxes").
RANDOM_FULL_MAX_BOXES = 10
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

    from .demo import write_demo_vocab

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

    from .demo import with_relative_positions
    from ..files import atomic_write

    torch.manual_seed(seed)
    state = with_relative_positions(sam_model_registry["vit_b"](checkpoint=None).state_dict())
    atomic_write(path, lambda temporary: torch.save(state, temporary))
    path.with_name(path.name + ".DEMO_WEIGHTS").write_text(RANDOM_NOTE, encoding="utf-8")
    return path


def _save_random_hf(model: torch.nn.Module, processor: object, directory: Path) -> Path:
    """Save a model and its processor into `directory` through a .partial folder (complete or absent)."""
    from transformers.utils import logging as transformers_logging

    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    transformers_logging.disable_progress_bar()
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    (partial / "DEMO_WEIGHTS").write_text(RANDOM_NOTE, encoding="utf-8")
    partial.rename(directory)
    return directory


def build_random_sam2_hiera_tiny(directory: Path, seed: int = 0) -> Path:
    """SAM 2.1 Hiera-T with random weights: transformers' default Sam2Config is facebook/sam2.1-hiera-tiny's architecture."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(seed)
    model = Sam2Model(Sam2Config()).eval()  # Hiera blocks [1, 2, 7, 2], widths 96..768, 1024 px input
    return _save_random_hf(model, Sam2Processor(image_processor=Sam2ImageProcessor()), directory)


def build_random_edgetam(directory: Path, seed: int = 0) -> Path:
    """EdgeTAM with random weights: transformers' EdgeTamConfig (timm RepViT-M1, yonigozlan/EdgeTAM-hf)."""
    from transformers import EdgeTamConfig, EdgeTamModel, Sam2ImageProcessor, Sam2Processor, TimmWrapperConfig

    # the image encoder named explicitly: transformers 5.23's EdgeTamVisionConfig default spells its timm
    # architecture key "archirecture", so a bare EdgeTamConfig() gets timm_wrapper's resnet50 instead of RepViT-M1
    backbone = TimmWrapperConfig(architecture="repvit_m1",
                                 model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
    torch.manual_seed(seed)
    model = EdgeTamModel(EdgeTamConfig(vision_config={"backbone_config": backbone})).eval()
    return _save_random_hf(model, Sam2Processor(image_processor=Sam2ImageProcessor()), directory)


def build_random_omdet_turbo(directory: Path, seed: int = 0) -> Path:
    """OmDet-Turbo with random weights: transformers' default OmDetTurboConfig (timm Swin-T, omlab/omdet-turbo-swin-tiny-hf), 640 px."""
    from transformers import DetrImageProcessor, OmDetTurboConfig, OmDetTurboForObjectDetection, OmDetTurboProcessor

    from .demo import write_char_clip_tokenizer

    directory = Path(directory)
    tokenizer = write_char_clip_tokenizer(directory.with_name(directory.name + ".tokenizer"))
    torch.manual_seed(seed)
    model = OmDetTurboForObjectDetection(OmDetTurboConfig()).eval()
    processor = OmDetTurboProcessor(image_processor=DetrImageProcessor(size={"height": 640, "width": 640}, do_pad=False),
                                    tokenizer=tokenizer)
    return _save_random_hf(model, processor, directory)


# backend -> (folder name in the cache, builder) for the fast profile's families; others get GDINO-T / SAM ViT-B
RANDOM_DETECTORS = {"omdet-turbo": ("omdet-turbo-swin-tiny-random", build_random_omdet_turbo)}
RANDOM_SEGMENTERS = {"hf-sam2": ("sam2.1-hiera-tiny-random", build_random_sam2_hiera_tiny),
                     "hf-edgetam": ("edgetam-random", build_random_edgetam)}


def random_full_models(cache: Path | None = None, detector_backend: str = "auto",
                       segmenter_backend: str = "auto") -> tuple[Path, Path]:
    """(detector, segmenter) paths of the full-size random models for these backends, built on first use.

    The fast profile's backends (hf-sam2, hf-edgetam, omdet-turbo) get their own families at real size;
    any other backend gets Grounding DINO-T and SAM ViT-B.
    """
    cache = Path(cache) if cache else default_cache()
    detector = built(cache, *RANDOM_DETECTORS.get(detector_backend, (DETECTOR_DIR, build_random_grounding_dino_tiny)))
    segmenter = built(cache, *RANDOM_SEGMENTERS.get(segmenter_backend, (SEGMENTER_FILE, build_random_sam_vit_b)))
    return detector, segmenter


def built(cache: Path, name: str, build) -> Path:
    """cache/name, built by `build` unless already complete (a model folder with its config.json, or a .pth file)."""
    path = cache / name
    complete = (path / "config.json").is_file() if path.suffix != ".pth" else path.is_file()
    if not complete:
        build(path)
    return path
