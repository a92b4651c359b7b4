"""Step 1-1: object tags T_n from the chosen normal images, by one of two rules.

- `tagger` (iapas recipe): the tagger's tags over the images, defect words removed.
- `top1-detected` (official recipe; test_zsas.py with utils/function.py process_good_phrases,
  process_single_image and process_object_output): each image's tags become one caption; Grounding DINO
  finds boxes for it, NMS runs, and the image's top-scoring box gives a (phrase, score); over all images
  the phrase with the highest score is the single object tag (pandas groupby max then nlargest(1), so
  equal scores go to the alphabetically first phrase). Boxes without a phrase are skipped, and with no
  box on any image the tag falls back to the category name (the official code fails there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import Detector
from ..backends.taggers import Tagger
from ..vocabulary import remove_defect_words
from .filtering import nms


@dataclass
class TagStage:
    """Tags the normal images; defect words ("crack", "scratch", ...) never become tags."""

    tagger: Tagger
    name: str = "tagging"
    inputs: tuple[str, ...] = ("normal_images",)
    outputs: tuple[str, ...] = ("tags",)

    def run(self, normal_images: Sequence[np.ndarray]) -> dict[str, tuple[str, ...]]:
        return {"tags": remove_defect_words(self.tagger.tag(normal_images))}


def official_tag_caption(tags: Sequence[str]) -> str:
    """One image's tags as the official caption: RAM's "a | b" with utils/function.py process_single_image's edits.

    " |" becomes ".", "close-up" and "number. " are deleted; get_grounding_output then lower-cases,
    strips and appends '.'.
    """
    text = " | ".join(tags).strip(" ").replace("  ", " ").replace(" |", ".").replace("close-up", "").replace("number. ", "")
    text = text.lower().strip()
    return text if text.endswith(".") else text + "."


def top_phrase(candidates: Sequence[tuple[str, float]]) -> str | None:
    """The phrase with the highest score; equal scores: the alphabetically first (pandas groupby + nlargest)."""
    best: dict[str, float] = {}
    for phrase, score in candidates:
        if phrase:
            best[phrase] = max(score, best.get(phrase, float("-inf")))
    if not best:
        return None
    return min(best, key=lambda phrase: (-best[phrase], phrase))


def image_top_box(boxes, iou_threshold: float) -> tuple[str, float] | None:
    """(phrase, score) of an image's top-scoring box after NMS (utils/function.py process_object_output)."""
    kept = nms(boxes, iou_threshold)
    if len(kept) == 0:
        return None
    best = int(np.argmax(kept.scores))
    return kept.phrases[best], float(kept.scores[best])


@dataclass
class TopOneTagStage:
    """The official object tag: the best Grounding DINO phrase over the normal images' own tags."""

    tagger: Tagger
    detector: Detector
    box_threshold: float
    text_threshold: float
    iou_threshold: float
    fallback: tuple[str, ...] = ()
    phrase_rule: str = "tokens"
    name: str = "tagging"
    inputs: tuple[str, ...] = ("normal_images",)
    outputs: tuple[str, ...] = ("tags",)

    def run(self, normal_images: Sequence[np.ndarray]) -> dict[str, tuple[str, ...]]:
        candidates = []
        for image, tags in zip(normal_images, self.tagger.tag_each(normal_images)):
            if not tags:
                continue
            boxes = self.detector.detect_captions(
                image, [official_tag_caption(tags)], self.box_threshold, self.text_threshold, self.phrase_rule
            )
            top = image_top_box(boxes, self.iou_threshold)
            if top is not None:
                candidates.append(top)
        phrase = top_phrase(candidates)
        return {"tags": (phrase,) if phrase else tuple(self.fallback[:1])}
