"""Grounding DINO through transformers, loaded offline from a Hugging Face-format directory or an original .pth."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import WeightsError
from ..types import Boxes
from .base import DETECTORS, require_path


def caption_for(prompts: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's caption "a . b . c ." and each prompt's character span in it."""
    caption, spans = "", []
    for prompt in prompts:
        start = len(caption)
        caption += prompt
        spans.append((start, len(caption)))
        caption += " . "
    return caption.strip(), spans


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each prompt's character span, the indices of the tokens that fall inside it."""
    spans = []
    for start, end in char_spans:
        spans.append([i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end])
    return spans


class HFGroundingDino:
    """Scores every query box against each prompt and keeps the boxes above the box threshold."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        path = Path(path)
        if path.is_file():  # an original IDEA-Research checkpoint: converted once into <file>.hf/ beside it
            from .groundingdino_convert import converted_groundingdino_dir

            path = converted_groundingdino_dir(path)
        require_path(path, "Grounding DINO", expect_dir=True)
        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise WeightsError(f"cannot load Grounding DINO from {path}: {str(error).splitlines()[0]}") from None
        self.model.to(device).eval()
        self.device = device
        self.model_id = f"grounding-dino:{Path(path).name}"
        self.max_text_len = int(getattr(self.model.config, "max_text_len", 256))

    def _chunks(self, prompts: Sequence[str]) -> list[list[str]]:
        """Split prompts into groups whose caption fits the model's text length."""
        tokenizer = self.processor.tokenizer
        chunks: list[list[str]] = [[]]
        for prompt in prompts:
            trial = chunks[-1] + [prompt]
            if chunks[-1] and len(tokenizer(caption_for(trial)[0])["input_ids"]) > self.max_text_len:
                chunks.append([prompt])
            else:
                chunks[-1] = trial
        return [chunk for chunk in chunks if chunk]

    @torch.inference_mode()
    def detect(self, image: np.ndarray, prompts: Sequence[str], box_threshold: float, text_threshold: float) -> Boxes:
        height, width = image.shape[:2]
        pil = Image.fromarray(image)
        all_boxes: list[np.ndarray] = []
        all_scores: list[np.ndarray] = []
        all_phrases: list[str] = []
        for chunk in self._chunks([p.strip().lower() for p in prompts if p.strip()]):
            caption, char_spans = caption_for(chunk)
            encoded = self.processor(images=pil, text=caption, return_tensors="pt", return_offsets_mapping=True)
            offsets = encoded.pop("offset_mapping")[0].tolist()
            spans = token_spans(offsets, char_spans)
            outputs = self.model(**{key: value.to(self.device) for key, value in encoded.items()})
            probabilities = outputs.logits[0].sigmoid().float().cpu()  # (queries, text tokens)
            prompt_scores = torch.stack(
                [probabilities[:, span].max(dim=1).values if span else torch.zeros(len(probabilities)) for span in spans],
                dim=1,
            )  # (queries, prompts)
            best_scores, best_prompt = prompt_scores.max(dim=1)
            keep = best_scores > box_threshold
            boxes = outputs.pred_boxes[0].float().cpu()[keep]  # normalised cx, cy, w, h
            xyxy = torch.stack(
                [
                    (boxes[:, 0] - boxes[:, 2] / 2) * width,
                    (boxes[:, 1] - boxes[:, 3] / 2) * height,
                    (boxes[:, 0] + boxes[:, 2] / 2) * width,
                    (boxes[:, 1] + boxes[:, 3] / 2) * height,
                ],
                dim=1,
            )
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
            all_boxes.append(xyxy.numpy())
            all_scores.append(best_scores[keep].numpy())
            for score, index in zip(best_scores[keep].tolist(), best_prompt[keep].tolist()):
                all_phrases.append(chunk[index] if score > text_threshold else "")
        if not all_boxes:
            return Boxes.empty()
        return Boxes(np.concatenate(all_boxes), np.concatenate(all_scores), tuple(all_phrases))


@DETECTORS.register("hf-grounding-dino")
def load_hf_grounding_dino(path: Path, device: torch.device) -> HFGroundingDino:
    return HFGroundingDino(path, device)
