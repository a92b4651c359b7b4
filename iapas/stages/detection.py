"""Step 2-1: boxes and confidences from Grounding DINO for the prompts P_final.

Prompts become captions by a caption format (a recipe rule); a list too long for Grounding DINO's
text length is split into several captions, and the detector encodes the image once for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..backends.base import Detector
from ..errors import IapasError
from ..registry import Registry
from ..types import Boxes
from ..vocabulary import normalise_prompt


def dots_caption(prompts: Sequence[str]) -> str:
    """ "a . b . c .": one sub-sentence per prompt (Grounding DINO's training format; the iapas recipe)."""
    return " . ".join(prompts) + " ."


def official_caption(prompts: Sequence[str]) -> str:
    """The official caption of P_final = (*nouns, object tag).

    utils/function.py process_anomaly_tags_2 writes ' . ' + nouns + ', ' + object_tag + '.', where
    clean_string has already turned the nouns' commas into '.'; get_grounding_output then lower-cases,
    strips and ends it with '.'. A single prompt (the object tag alone) is `tag.`, as get_grounding_output
    makes it.
    """
    *nouns, tag = prompts
    caption = f" . {'. '.join(nouns)}, {tag}." if nouns else f"{tag}"
    caption = caption.lower().strip()
    return caption if caption.endswith(".") else caption + "."


CAPTION_FORMATS: Registry[Callable[[Sequence[str]], str]] = Registry("caption format")
CAPTION_FORMATS.register("dots")(dots_caption)
CAPTION_FORMATS.register("official")(official_caption)


def captions_for(prompts: Sequence[str], caption_format: str, fits: Callable[[str], bool]) -> list[str]:
    """Captions holding every prompt, packed greedily in order, each one fitting the detector's text length.

    The official format keeps its last prompt (the object tag) at the end of every caption, so each
    split caption still ends in ", tag." as the official one does.
    """
    build = CAPTION_FORMATS.get(caption_format)
    prompts = [normalise_prompt(p) for p in prompts if p.strip()]
    if not prompts:
        return []
    tail = [prompts.pop()] if caption_format == "official" else []
    if not prompts:
        return [build(tail)]
    groups: list[list[str]] = [[]]
    for prompt in prompts:
        trial = groups[-1] + [prompt]
        if groups[-1] and not fits(build(trial + tail)):
            groups.append([prompt])
        else:
            groups[-1] = trial
    captions = [build(group + tail) for group in groups]
    too_long = [c for c in captions if not fits(c)]
    if too_long:
        raise IapasError(f"a prompt does not fit Grounding DINO's text length on its own: {too_long[0][:60]!r}")
    return captions


BOX_CLAMP_RULES = ("at-detection", "before-masking")  # where boxes are cut to the image (config detection.box_clamp)


def clamps_at_detection(rule: str) -> bool:
    """Whether the recipe's clamp rule cuts boxes to the image as they are detected (else only before masking)."""
    if rule not in BOX_CLAMP_RULES:
        raise IapasError(f"unknown box clamp rule {rule!r} (choose from {', '.join(BOX_CLAMP_RULES)})")
    return rule == "at-detection"


@dataclass
class DetectStage:
    """Runs the detector once per image over all prompts; thresholds come per call (a calibration sets them).

    Detectors give boxes as predicted, reaching past the image where the prediction does; `clamp` cuts them
    to the image here (the iapas recipe), else they stay as predicted through NMS and the size rule, as the
    official code has them, and the masking stage cuts them before SAM.
    """

    detector: Detector
    caption_format: str = "dots"
    phrase_rule: str = "words"
    max_boxes: int = 0  # keep the K highest-scoring boxes per image (0: all)
    clamp: bool = True
    name: str = "detection"
    inputs: tuple[str, ...] = ("image", "prompts", "box_threshold", "text_threshold")
    outputs: tuple[str, ...] = ("boxes",)

    def run(self, image: np.ndarray, prompts: tuple[str, ...], box_threshold: float, text_threshold: float) -> dict[str, Boxes]:
        captions = captions_for(prompts, self.caption_format, self.detector.fits)
        boxes = self.detector.detect_captions(image, captions, box_threshold, text_threshold, self.phrase_rule)
        return {"boxes": self._finished(boxes, image)}

    def _finished(self, boxes: Boxes, image: np.ndarray) -> Boxes:
        """The image's K best boxes, cut to the image when this stage clamps."""
        boxes = boxes.top(self.max_boxes)
        return boxes.clamped(*image.shape[:2]) if self.clamp else boxes

    def run_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Boxes]]:
        """`run` on several images: those sharing prompts and thresholds go through the detector together.

        A detector without `detect_captions_batch` gets the images one by one, with the same results.
        """
        results: list[dict[str, Boxes]] = [{}] * len(items)
        batched = getattr(self.detector, "detect_captions_batch", None)
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(items):
            key = (tuple(item["prompts"]), item["box_threshold"], item["text_threshold"])
            groups.setdefault(key, []).append(index)
        for (prompts, box_threshold, text_threshold), members in groups.items():
            if batched is None:
                for index in members:
                    results[index] = self.run(**items[index])
                continue
            captions = captions_for(prompts, self.caption_format, self.detector.fits)
            found = batched([items[i]["image"] for i in members], captions, box_threshold, text_threshold, self.phrase_rule)
            for index, boxes in zip(members, found):
                results[index] = {"boxes": self._finished(boxes, items[index]["image"])}
        return results
