"""OmDet-Turbo through transformers: a faster open-vocabulary detector for the fast profile.

How its scores map onto iapas' two thresholds. Grounding DINO scores each query against every token
of one caption; OmDet-Turbo scores each query against every *class* (one prompt each, encoded on its
own by the CLIP text encoder, with the task sentence "Detect a, b." as extra conditioning;
transformers OmDetTurboProcessor.__call__). Its class logits go through a sigmoid
(transformers processing_omdet_turbo.py compute_score), so iapas applies the same rule as for
Grounding DINO with classes in place of tokens:

- box threshold: a query is kept when its highest class probability exceeds it, and it is scored
  by that maximum (Grounding DINO: the highest token probability);
- text threshold: the box is named by the classes whose probability exceeds it, in prompt order
  (Grounding DINO: the tokens above it). There is no token-level text score, so a class is the
  smallest unit a box can be named by.

Unlike transformers' post_process_grounded_object_detection, no NMS runs here: the pipeline's own
NMS stage (step 2-2) does it, as for Grounding DINO.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..types import Boxes
from .base import DETECTORS, load_error, register_model_type, require_path
from .grounding_dino import concatenate

CLIP_TEXT_TOKENS = 77  # CLIP's text length: the task sentence and each class must fit


def classes_of(caption: str) -> list[str]:
    """The prompts of a caption in any of iapas' caption formats ("a . b ." or " . a. b, tag."), in order, once each."""
    return list(dict.fromkeys(part.strip() for part in re.split(r"[.,]", caption) if part.strip()))


def task_sentence(classes: Sequence[str]) -> str:
    """OmDet-Turbo's detection task for a class list (the processor's default, OmDetTurboProcessor.__call__)."""
    return f"Detect {', '.join(classes)}."


def boxes_from_class_logits(
    class_logits: torch.Tensor, boxes_cxcywh: torch.Tensor, classes: Sequence[str], box_threshold: float,
    text_threshold: float, height: int, width: int,
) -> Boxes:
    """The module docstring's rule on one image's (queries, classes) logits and normalised (cx, cy, w, h) boxes."""
    probabilities = class_logits.float().sigmoid()
    scores = probabilities.max(dim=1).values
    keep = scores > box_threshold
    kept = boxes_cxcywh.float()[keep]
    xyxy = torch.stack([kept[:, 0] - kept[:, 2] / 2, kept[:, 1] - kept[:, 3] / 2,
                        kept[:, 0] + kept[:, 2] / 2, kept[:, 1] + kept[:, 3] / 2], dim=1)
    # as predicted, not cut to the image: the detection stage clamps by the recipe's rule (config detection.box_clamp)
    xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)
    above = (probabilities[keep] > text_threshold).numpy()
    phrases = tuple(" ".join(name for name, hit in zip(classes, row) if hit) for row in above)
    return Boxes(xyxy.numpy(), scores[keep].numpy(), phrases)


class HFOmDetTurbo:
    """OmDet-Turbo with iapas' box and text thresholds (see the module docstring)."""

    def __init__(self, path: Path, device: torch.device, input_size: int = 0) -> None:
        from transformers import AutoProcessor, OmDetTurboForObjectDetection

        require_path(path, "OmDet-Turbo", expect_dir=True)
        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = OmDetTurboForObjectDetection.from_pretrained(path, local_files_only=True)
        except Exception as error:  # safetensors, torch and transformers each raise their own types for a bad file
            raise load_error("OmDet-Turbo", path, error) from None
        self.model.to(device).eval()
        self.device = device
        # its image processor resizes to a fixed square (640 px for omlab/omdet-turbo-swin-tiny-hf)
        self.pixel_options = {"size": {"height": int(input_size), "width": int(input_size)}} if input_size else {}
        self.max_text_len = min(int(getattr(self.processor.tokenizer, "model_max_length", CLIP_TEXT_TOKENS)), CLIP_TEXT_TOKENS)
        self.model_id = f"omdet-turbo:{Path(path).name}"

    def fits(self, caption: str) -> bool:
        """Whether the caption's task sentence fits CLIP's text length."""
        return len(self.processor.tokenizer(task_sentence(classes_of(caption)))["input_ids"]) <= self.max_text_len

    def detect(self, image: np.ndarray, prompts: Sequence[str], box_threshold: float, text_threshold: float) -> Boxes:
        """Boxes for prompts, split into captions whose task sentence fits the text length."""
        from ..stages.detection import captions_for

        return self.detect_captions(image, captions_for(prompts, "dots", self.fits), box_threshold, text_threshold)

    @torch.inference_mode()
    def detect_captions(
        self, image: np.ndarray, captions: Sequence[str], box_threshold: float, text_threshold: float,
        phrase_rule: str = "words",
    ) -> Boxes:
        """Boxes of each caption's classes on one image (phrase_rule does not apply: boxes are named by classes)."""
        height, width = image.shape[:2]
        picture = Image.fromarray(image)
        parts = []
        for caption in captions:
            classes = classes_of(caption)
            if not classes:
                continue
            inputs = self.processor(images=picture, text=classes, return_tensors="pt", **self.pixel_options)
            outputs = self.model(**{key: value.to(self.device) for key, value in inputs.items()})
            parts.append(boxes_from_class_logits(outputs.decoder_class_logits[0].cpu(), outputs.decoder_coord_logits[0].cpu(),
                                                 classes, box_threshold, text_threshold, height, width))
        return concatenate(parts)


@DETECTORS.register("omdet-turbo")
def load_omdet_turbo(path: Path, device: torch.device, input_size: int = 0) -> HFOmDetTurbo:
    return HFOmDetTurbo(path, device, input_size)


register_model_type("detector", "omdet-turbo", "omdet-turbo", family="omdet-turbo")
