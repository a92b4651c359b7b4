"""SAM 3 (transformers `Sam3Model` / `Sam3Processor`) as the IAP-AS graph's detector AND segmenter.

SAM 3 segments text concepts: given an image and a noun phrase it returns every instance's box, score and
mask in one model. In the stage graph it stands where Grounding DINO and SAM stand: the detection stage hands
it the prompts (in captions, which it splits back into concepts), it encodes the image once (the size filter's
object tag included) and runs its text, DETR and mask heads once per concept; the boxes go through NMS and the size filter like any detector's, and the masking
stage then asks for the masks of the boxes that survived, which are SAM 3's own masks of those instances,
unchanged (`segment_boxes` looks them up; it never re-segments).

Thresholds: `--box-threshold` is SAM 3's instance score threshold (the processor's `threshold`: the query's
sigmoid score times the image-level presence score); SAM 3 has no per-token text scores, so
`--text-threshold` has no meaning here and is refused (iapas/cli/common.py); the mask threshold is the
processor's default, 0.5 on the mask probability (`MASK_THRESHOLD`).
"""
from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import DETECTORS, SEGMENTERS, load_error, register_model_type, require_path
from ..errors import IapasError
from ..types import Boxes

MASK_THRESHOLD = 0.5  # Sam3Processor.post_process_instance_segmentation's default
KEPT_IMAGES = 16  # the masks of this many recent images are held until the masking stage asks (a batch's worth)


def concepts_of(captions: Sequence[str]) -> list[str]:
    """The noun phrases of the detection stage's captions, in order, each once ("scratch . dent ." -> scratch, dent).

    Any caption format splits the same way: the dots format separates prompts by '.', the official one by '.'
    and ', ' (its object tag last), so SAM 3 sees the prompts themselves, one concept each.
    """
    concepts: list[str] = []
    for caption in captions:
        for part in re.split(r"[.,]", caption):
            if part.strip() and part.strip() not in concepts:
                concepts.append(part.strip())
    return concepts


def image_key(image: np.ndarray) -> str:
    """A content key of an image: the detection and masking stages hand the backend the same pixels."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(image.shape)


class Sam3Backend:
    """One loaded Sam3Model serving the graph as its Detector and its Segmenter (`also_segments`)."""

    also_segments = "sam3"  # the segmenter backend this detector serves itself (Pipeline.from_config shares the model)

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        from transformers import Sam3Model, Sam3Processor

        path = Path(path)
        require_path(path, "SAM 3", expect_dir=True)
        try:
            self.model = Sam3Model.from_pretrained(path, local_files_only=True).to(device).eval()
            self.processor = Sam3Processor.from_pretrained(path, local_files_only=True)
        except Exception as error:  # safetensors, torch and transformers each raise their own types for a bad file
            raise load_error("SAM 3", path, error) from None
        self.device = torch.device(device)
        # masks of the instances detected on recent images, by image and box, until the masking stage takes them:
        # the graph's stages speak Boxes to each other, and SAM 3's masks belong to its boxes
        self._masks: OrderedDict[str, dict[bytes, np.ndarray]] = OrderedDict()
        self._vision: tuple[str, object] | None = None  # the last image's key and vision features

    def fits(self, caption: str) -> bool:
        """Any caption fits: SAM 3 encodes each of its concepts on its own (`concepts_of`)."""
        return True

    def detect(self, image: np.ndarray, prompts: Sequence[str], box_threshold: float, text_threshold: float) -> Boxes:
        return self.detect_captions(image, [f"{prompt} ." for prompt in prompts], box_threshold, text_threshold)

    @torch.inference_mode()
    def detect_captions(self, image: np.ndarray, captions: Sequence[str], box_threshold: float, text_threshold: float,
                        phrase_rule: str = "words") -> Boxes:
        """Every instance of every concept scoring at least `box_threshold`; the image is encoded once for all of them."""
        height, width = image.shape[:2]
        concepts = concepts_of(captions)
        if not concepts:
            return Boxes.empty()
        vision = self._vision_of(image)
        xyxy, scores, phrases, masks = [], [], [], []
        for concept in concepts:
            text = self.processor(text=concept, return_tensors="pt").to(self.device)
            output = self.model(vision_embeds=vision, input_ids=text.input_ids, attention_mask=text.attention_mask)
            found = self.processor.post_process_instance_segmentation(output, threshold=box_threshold, mask_threshold=MASK_THRESHOLD,
                                                                      target_sizes=[(height, width)])[0]
            xyxy.append(found["boxes"].float().cpu().numpy().reshape(-1, 4))
            scores.append(found["scores"].float().cpu().numpy().reshape(-1))
            masks.append(found["masks"].bool().cpu().numpy().reshape(-1, height, width))
            phrases.extend([concept] * len(scores[-1]))
        boxes = Boxes(np.concatenate(xyxy), np.concatenate(scores), tuple(phrases))
        self._remember(image, boxes.xyxy, np.concatenate(masks))
        return boxes

    def _vision_of(self, image: np.ndarray):
        """The image's vision features, encoded once: the size filter's object tag reuses the prompts' encoding."""
        key = image_key(image)
        if self._vision is None or self._vision[0] != key:
            pixels = self.processor(images=image, return_tensors="pt").pixel_values.to(self.device)
            self._vision = (key, self.model.get_vision_features(pixel_values=pixels))
        return self._vision[1]

    def _remember(self, image: np.ndarray, xyxy: np.ndarray, masks: np.ndarray) -> None:
        held = self._masks.setdefault(image_key(image), {})
        self._masks.move_to_end(image_key(image))
        for row, mask in zip(np.asarray(xyxy, np.float32), masks):
            held[row.tobytes()] = mask
        while len(self._masks) > KEPT_IMAGES:
            self._masks.popitem(last=False)

    def segment_boxes(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """(N, H, W) bool: SAM 3's own masks of boxes it detected on this image (it segments no other box)."""
        held = self._masks.get(image_key(image), {})
        rows = np.asarray(xyxy, np.float32).reshape(-1, 4)
        missing = [row for row in rows if row.tobytes() not in held]
        if missing:
            raise IapasError("SAM 3 masks only the instances it detected itself: use it as both detector and segmenter "
                             "(--profile sam3), or another --segmenter-backend with another detector")
        return np.stack([held[row.tobytes()] for row in rows])


def load_sam3(path: Path, device: torch.device, input_size: int = 0) -> Sam3Backend:
    """The detector loader (`input_size` is not an option of SAM 3: its processor's 1008 px is fixed)."""
    if input_size:
        raise IapasError("--detector-input-size does not apply to SAM 3 (its processor's input size is fixed)")
    return Sam3Backend(path, device)


def load_sam3_segmenter(path: Path, device: torch.device) -> Sam3Backend:
    """SAM 3 as a segmenter on its own masks only: Pipeline.from_config shares the detector's model instead of this."""
    return Sam3Backend(path, device)


DETECTORS.register("sam3")(load_sam3)
SEGMENTERS.register("sam3")(load_sam3_segmenter)
register_model_type("detector", "sam3", "sam3", "sam3")
