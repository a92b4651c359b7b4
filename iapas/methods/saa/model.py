"""SAA+ on iapas's Grounding DINO and SAM backends: hybrid prompts, saliency rescoring, confidence ranking."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...types import Boxes, Masks, Result
from ..batching import rgb_pixels
from .prompts import SaaPrompts, prompts_for
from .rules import SALIENCY_POWER, Proposals, confidence_map, filter_boxes, largest_area, output_map, pixel_boxes, rescore
from .saliency import SaliencyNet, multi_object_saliency, single_object_saliency

# eval_SAA.py --box_threshold and --text_threshold defaults
BOX_THRESHOLD = 0.1
TEXT_THRESHOLD = 0.1
# SAA/model.py: the object pass's filtered phrase, which no decoded (lower-case) phrase contains
OBJECT_FILTER = "PlaceHolder"
MAP_BOUND = float(np.exp(SALIENCY_POWER))  # no SAA+ map value reaches it


def saa_caption(prompt: str) -> str:
    """SAA/model.py get_grounding_output: lower-cased, stripped, '.' appended unless it ends with one."""
    caption = prompt.lower().strip()
    return caption if caption.endswith(".") else caption + "."


@dataclass
class SaaPlus:
    """SAA+ (Cao et al., 2023): training-free, one category's hybrid prompts set by `prepare`.

    `detector` is iapas's HFGroundingDino (its `token_probabilities`), `segmenter` a SAM backend, `saliency` the
    wide_resnet50_2 feature net. SAA+ reads images as cv2 does (BGR) and hands that array to SAM and to the
    saliency net unconverted (only Grounding DINO gets RGB); `bgr_quirk` keeps that, as upstream runs.
    """

    detector: Any
    segmenter: Any
    saliency: SaliencyNet
    dataset: str = ""
    box_threshold: float = BOX_THRESHOLD
    text_threshold: float = TEXT_THRESHOLD
    bgr_quirk: bool = True
    name: str = "saa"
    prompts: SaaPrompts = field(init=False)

    def __post_init__(self) -> None:
        self.prompts = prompts_for(self.dataset, "object")

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """The category's prompts (training-free: no image is used)."""
        self.prompts = prompts_for(self.dataset, category)

    def use_dataset(self, dataset: str) -> None:
        """The dataset whose SAA+ prompt file `prepare` reads (iapas eval calls it, as for MuSc)."""
        self.dataset = dataset

    def propose(self, image: np.ndarray, captions: Sequence[tuple[str, str]], max_area: float) -> Proposals:
        """SAA/model.py ensemble_text_guided_mask_proposal's boxes: each caption alone, filtered, then joined."""
        parts = []
        for prompt, filtered in captions:
            caption = saa_caption(prompt)
            probabilities, boxes, tokens = self.detector.token_probabilities(image, caption)
            from ...backends.grounding_dino import phrase_as_decoded

            parts.append(filter_boxes(probabilities, boxes, lambda above: phrase_as_decoded(tokens, above), filtered,
                                      self.box_threshold, self.text_threshold, max_area))
        return Proposals.joined(parts)

    def masks(self, image: np.ndarray, proposals: Proposals) -> np.ndarray:
        """(N, H, W) bool SAM masks of the proposals (SAM's own full-resolution path), one all-False mask when none."""
        height, width = image.shape[:2]
        if not len(proposals):
            return np.zeros((1, height, width), bool)
        segment = getattr(self.segmenter, "segment_boxes_full_resolution", self.segmenter.segment_boxes)
        return np.asarray(segment(image, pixel_boxes(proposals.cxcywh, height, width)), bool)

    def run(self, image: np.ndarray) -> dict[str, Any]:
        """Every intermediate of one RGB image: object and anomaly proposals and masks, saliency, scores, the map (H, W)."""
        prompts = self.prompts
        seen = np.ascontiguousarray(image[..., ::-1]) if self.bgr_quirk else image  # what SAM and the saliency net get
        objects = self.propose(image, [(prompts.object_caption, OBJECT_FILTER)], prompts.object_max_area)
        anomaly_cap = largest_area(objects) * prompts.max_area  # SAA/model.py forward: defect_max_area
        anomalies = self.propose(image, prompts.language, anomaly_cap)
        # one SAM encoding for both sets of boxes, as SAA+ sets its image once per test image (each box decodes alone)
        masks = self.masks(seen, Proposals.joined([objects, anomalies]))
        empty = np.zeros((1, *image.shape[:2]), bool)  # SAA+'s stand-in when no box is left
        object_masks = masks[: len(objects)] if len(objects) else empty
        anomaly_masks = masks[len(objects):] if len(anomalies) else empty
        scores = anomalies.scores.astype(np.float64) if len(anomalies) else np.zeros(1)
        if prompts.objects == 1:
            saliency = single_object_saliency(self.saliency, seen)
        else:
            saliency = multi_object_saliency(self.saliency, seen, object_masks)
        rescored = rescore(anomaly_masks, scores, saliency)
        anomaly_map = confidence_map(anomaly_masks, rescored, prompts.max_anomalies)
        return {"objects": objects, "anomalies": anomalies, "object_masks": object_masks, "anomaly_masks": anomaly_masks,
                "saliency": saliency, "scores": rescored, "map": anomaly_map}

    def official_map(self, image: np.ndarray) -> np.ndarray:
        """Upstream SAA+'s output: the map resized (cv2 bilinear) to 400 x 400."""
        return output_map(self.run(rgb_pixels(image))["map"])

    def segment(self, image: np.ndarray) -> Result:
        """The map at the image's own size (before upstream's 400 x 400 resize, which evaluation protocols do themselves)."""
        pixels = rgb_pixels(image)
        start = time.perf_counter()
        return self.result(self.run(pixels), pixels.shape[:2], {"saa": time.perf_counter() - start})

    def result(self, parts: dict[str, Any], shape: tuple[int, int], timings: dict[str, float] | None = None) -> Result:
        """`run`'s intermediates as a Result: kept anomaly boxes and masks, the map scaled into [0, 1]."""
        height, width = shape
        anomalies: Proposals = parts["anomalies"]
        boxes = Boxes(pixel_boxes(anomalies.cxcywh, height, width), anomalies.scores, anomalies.phrases) if len(anomalies) else Boxes.empty()
        masks = Masks(parts["anomaly_masks"]) if len(anomalies) else Masks.empty(height, width)
        captions = tuple(prompt for prompt, _ in self.prompts.language)
        # SAA+'s map lies in [0, e^3) (a score <= 1 times exp(3 x saliency <= 1)); divided by e^3 it meets Result's [0, 1]
        # with the order of every pixel, and so every metric after a category's min-max, unchanged
        heat = (parts["map"] / MAP_BOUND).astype(np.float32)
        return Result(heat, boxes, masks, captions, dict(timings or {}), self.name)
