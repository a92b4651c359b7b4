"""CPU time of a CLIP method at fp32, under `--precision bf16` and with `--int8` encoders (see README.md here).

Usage: PYTHONPATH=. python benchmarks/clip_precision_cpu.py [THREADS]
AnomalyCLIP (its learned prompts drawn at random) on a ViT-B/16 CLIP with random weights (transformers'
default CLIP widths, 12 + 12 layers, 224 px, so AnomalyCLIP's input is 352 px), loaded through `ClipBackbone`
as users load a CLIP. Two 300x300 random images per `segment_outcomes` call (batch 2); median of 3 calls after
a warm-up, seconds per image. Compute does not depend on the weight values; the maps are meaningless.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def random_vit_b16_clip(directory: Path) -> Path:
    """A ViT-B/16 CLIP directory with random weights and the demo character tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from iapas.weights.demo import write_char_clip_tokenizer

    tokenizer = write_char_clip_tokenizer(directory)
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
                        vision_config=dict(patch_size=16, image_size=224))
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def main(threads: int) -> None:
    from iapas.backends.clip import ClipBackbone
    from iapas.methods.anomalyclip.model import AnomalyClip

    torch.set_num_threads(threads)
    images = [np.random.default_rng(seed).integers(0, 256, (300, 300, 3), dtype=np.uint8) for seed in range(2)]
    with tempfile.TemporaryDirectory() as folder:
        clip = random_vit_b16_clip(Path(folder) / "clip-vit-b16-random")
        for mode in ("fp32", "bf16", "int8"):
            backbone = ClipBackbone(clip, "cpu", "bf16" if mode == "bf16" else "fp32")
            if mode == "int8":
                backbone.quantise_encoders()
            torch.manual_seed(0)
            model = AnomalyClip(backbone).eval()
            model.segment_outcomes(images, 2)  # warm-up
            seconds = []
            for _ in range(3):
                start = time.perf_counter()
                model.segment_outcomes(images, 2)
                seconds.append(time.perf_counter() - start)
            print(f"{mode}: {statistics.median(seconds) / len(images):.3f} s per image "
                  f"({threads} thread(s), input {model.settings.image_size} px, batch 2)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
