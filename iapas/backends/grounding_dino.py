"""Grounding DINO through transformers, loaded offline from a Hugging Face-format directory or an original .pth.

Box selection follows the reference post-processing (groundingdino `util/inference.py` predict() and
`util/utils.py` get_phrases_from_posmap, which the official IAP-AS code calls through its
`utils/function.py` get_grounding_output; transformers' `post_process_grounded_object_detection`): a box
is kept when its highest token probability over the whole caption exceeds the box threshold, it is
scored by that maximum, and it is named by the caption tokens whose probability exceeds the text
threshold.
"""
from __future__ import annotations

import hashlib
import types
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import GROUNDING_DINO_MAX_TEXT_TOKENS
from ..registry import Registry
from ..types import Boxes
from .base import DETECTORS, load_error, register_model_type, require_path

PUNCTUATION = frozenset(".,")
# The box refinement's inverse sigmoid. The original clamps at 1e-3 (groundingdino util/misc.py inverse_sigmoid, called
# by models/GroundingDINO/transformer.py's decoder and groundingdino.py's box head); transformers' port uses
# torch.special.logit(x, eps=1e-5) in both places. They differ wherever a normalised box edge nears 0 or 1.
ORIGINAL_REFINEMENT_EPS = 1e-3
TRANSFORMERS_REFINEMENT_EPS = 1e-5
_REFINEMENT_EPS: ContextVar[float | None] = ContextVar("grounding_dino_refinement_eps", default=None)


@dataclass(frozen=True)
class CaptionTokens:
    """A tokenised caption: its token ids, which of them are special ([CLS], [SEP], [PAD]), and a decoder."""

    input_ids: tuple[int, ...]
    special: tuple[bool, ...]
    decode: Callable[[list[int]], str]


def _phrase_tokens(caption: CaptionTokens, above: np.ndarray) -> list[int]:
    # groundingdino util/utils.py get_phrases_from_posmap (left_idx=0) and transformers'
    # get_phrases_from_posmap: position 0 ([CLS]) never names a box
    return [caption.input_ids[i] for i in np.flatnonzero(above) if 0 < i < len(caption.input_ids)]


def phrase_as_decoded(caption: CaptionTokens, above: np.ndarray) -> str:
    """The tokens above the text threshold decoded as they are, as the official get_grounding_output names boxes."""
    return caption.decode(_phrase_tokens(caption, above)).strip()


def phrase_as_words(caption: CaptionTokens, above: np.ndarray) -> str:
    """The words above the text threshold: special tokens dropped and '.' ',' removed (groundingdino predict())."""
    kept = [i for i in np.flatnonzero(above) if 0 < i < len(caption.input_ids) and not caption.special[i]]
    text = caption.decode([caption.input_ids[i] for i in kept])
    return " ".join("".join(c for c in text if c not in PUNCTUATION).split())


PHRASE_RULES: Registry[Callable[[CaptionTokens, np.ndarray], str]] = Registry("phrase rule")
PHRASE_RULES.register("tokens")(phrase_as_decoded)
PHRASE_RULES.register("words")(phrase_as_words)


def inverse_sigmoid(values: torch.Tensor, eps: float) -> torch.Tensor:
    """The original's inverse sigmoid: values clamped to [0, 1], then log(max(x, eps) / max(1 - x, eps))."""
    values = values.clamp(0, 1)
    return torch.log(values.clamp(min=eps) / (1 - values).clamp(min=eps))


class _SpecialFunctions:
    """`torch.special` as transformers' Grounding DINO module sees it: `logit` follows the refinement epsilon in force."""

    def __getattr__(self, name: str) -> object:
        return getattr(torch.special, name)

    @staticmethod
    def logit(values: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        chosen = _REFINEMENT_EPS.get()
        return torch.special.logit(values, eps=eps) if chosen is None else inverse_sigmoid(values, chosen)


class _TorchSeenByGroundingDino(types.ModuleType):
    """`torch` with `special` replaced: every other name is torch's own."""

    special = _SpecialFunctions()

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)


def _route_refinement_logit() -> None:
    """Point transformers' Grounding DINO module at `torch` with our `special.logit` (once; a no-op outside `refinement_eps`).

    transformers calls `torch.special.logit(reference, eps=1e-5)` inside the decoder loop and the box head,
    where no hook reaches; the module's own `torch` name is the one place to choose the epsilon. Outside a
    `refinement_eps` block the call is transformers' unchanged.
    """
    from transformers.models.grounding_dino import modeling_grounding_dino as module

    if not isinstance(module.torch, _TorchSeenByGroundingDino):
        module.torch = _TorchSeenByGroundingDino("torch")


@contextmanager
def refinement_eps(eps: float) -> Iterator[None]:
    """Within the block (this thread or task only), Grounding DINO refines boxes with the original's inverse sigmoid at `eps`."""
    _route_refinement_logit()
    token = _REFINEMENT_EPS.set(float(eps))
    try:
        yield
    finally:
        _REFINEMENT_EPS.reset(token)


def boxes_from_logits(
    probabilities: torch.Tensor,
    boxes_cxcywh: torch.Tensor,
    caption: CaptionTokens,
    box_threshold: float,
    text_threshold: float,
    height: int,
    width: int,
    phrase_rule: str = "words",
) -> Boxes:
    """Reference box selection on one caption's (queries, text positions) probabilities.

    A query is kept when its maximum probability over the caption's tokens is above `box_threshold`;
    its score is that maximum; its phrase comes from the tokens above `text_threshold`. Boxes are
    normalised (cx, cy, w, h), returned as pixel xyxy NOT clamped to the image: the official code measures
    NMS and the object size on the boxes as predicted and clamps only before SAM (utils/function.py
    process_anomaly_segmentation); the recipe's `detection.box_clamp` says where iapas clamps.
    """
    length = len(caption.input_ids)
    probabilities = probabilities[:, :length].float()  # padding positions hold -inf logits (probability 0)
    scores = probabilities.max(dim=1).values
    keep = scores > box_threshold
    kept = boxes_cxcywh.float()[keep]
    xyxy = torch.stack(
        [
            (kept[:, 0] - kept[:, 2] / 2) * width,
            (kept[:, 1] - kept[:, 3] / 2) * height,
            (kept[:, 0] + kept[:, 2] / 2) * width,
            (kept[:, 1] + kept[:, 3] / 2) * height,
        ],
        dim=1,
    )
    name = PHRASE_RULES.get(phrase_rule)
    above = (probabilities[keep] > text_threshold).numpy()
    phrases = tuple(name(caption, row) for row in above)
    return Boxes(xyxy.numpy(), scores[keep].numpy(), phrases)


def concatenate(parts: Sequence[Boxes]) -> Boxes:
    """Boxes of several captions as one set, in caption order."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return Boxes.empty()
    return Boxes(
        np.concatenate([p.xyxy for p in parts]), np.concatenate([p.scores for p in parts]),
        tuple(phrase for p in parts for phrase in p.phrases),
    )


class _Replay:
    """Runs the wrapped forward on the first call and returns that output on every later call."""

    def __init__(self, forward: Callable, output: object = None) -> None:
        self.forward = forward
        self.output = output
        self.calls = 0

    def __call__(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
        if self.output is None:
            self.calls += 1
            self.output = self.forward(pixel_values, pixel_mask)
        return self.output


@contextmanager
def vision_features_reused(model: torch.nn.Module, features: object = None) -> Iterator[_Replay]:
    """Within the block, the model's vision backbone runs at most once: every caption reuses the same image features.

    transformers' GroundingDinoModel.forward calls `self.backbone(pixel_values, pixel_mask)` before it
    touches the text, and nothing the backbone returns depends on the caption, so one output serves
    every caption of the same image (`features`: an output kept from an earlier block on that image).
    The instance's forward is shadowed for the block only.
    """
    backbone = model.model.backbone
    replay = _Replay(backbone.forward, features)
    backbone.forward = replay
    try:
        yield replay
    finally:
        del backbone.forward  # the class's forward again


def shortest_edge_size(image_processor: object, input_size: int) -> dict:
    """Processor keywords resizing the shortest edge to `input_size` (the longest edge cap scaled alike); {} for 0.

    Grounding DINO's processor resizes the shortest edge to 800 px with the longest capped at 1333
    (transformers GroundingDinoImageProcessor defaults, groundingdino util/inference.py load_image's
    RandomResize([800], max_size=1333)); the fast profile asks for a smaller shortest edge, e.g. 512.
    """
    if not input_size:
        return {}
    size = dict(getattr(image_processor, "size", None) or {})
    shortest, longest = size.get("shortest_edge") or 800, size.get("longest_edge") or 1333
    return {"size": {"shortest_edge": int(input_size), "longest_edge": max(int(input_size), round(longest * input_size / shortest))}}


class HFGroundingDino:
    """Grounding DINO with the reference box selection; several captions share one image encoding."""

    def __init__(self, path: Path, device: torch.device, input_size: int = 0,
                 refinement_eps: float = ORIGINAL_REFINEMENT_EPS) -> None:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        path = Path(path)
        if path.is_file():  # an original IDEA-Research checkpoint: converted once into <file>.hf/ beside it
            from .groundingdino_convert import converted_groundingdino_dir

            path = converted_groundingdino_dir(path)
        require_path(path, "Grounding DINO", expect_dir=True)
        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True)
        except Exception as error:  # safetensors, torch and transformers each raise their own types for a bad file
            raise load_error("Grounding DINO", path, error) from None
        self.model.to(device).eval()
        self.device = device
        self.pixel_options = shortest_edge_size(self.processor.image_processor, input_size)
        self.model_id = f"grounding-dino:{Path(path).name}"
        self.max_text_len = int(getattr(self.model.config, "max_text_len", GROUNDING_DINO_MAX_TEXT_TOKENS))
        self.refinement_eps = refinement_eps  # the box refinement's inverse-sigmoid clamp (a recipe setting)
        self.backbone_runs = 0  # vision backbone passes, for tests and timing
        # image digest -> (pixel inputs, backbone output) of the images of the last backbone pass (one, or a batch's)
        self._recent: dict[str, tuple[dict, object]] = {}

    def forget_features(self) -> None:
        """Drop the kept image features: the next image is encoded afresh, even when it is the same one."""
        self._recent = {}

    def count_tokens(self, caption: str) -> int:
        """Tokens of a caption with [CLS] and [SEP]: what must fit in the model's text length."""
        return len(self.processor.tokenizer(caption)["input_ids"])

    def fits(self, caption: str) -> bool:
        return self.count_tokens(caption) <= self.max_text_len

    def detect(self, image: np.ndarray, prompts: Sequence[str], box_threshold: float, text_threshold: float) -> Boxes:
        """Boxes for prompts in the "a . b ." caption format, split into captions that fit the text length."""
        from ..stages.detection import captions_for

        return self.detect_captions(image, captions_for(prompts, "dots", self.fits), box_threshold, text_threshold)

    def _tokens(self, input_ids: list[int]) -> CaptionTokens:
        tokenizer = self.processor.tokenizer
        special_ids = set(tokenizer.all_special_ids)
        return CaptionTokens(
            tuple(input_ids), tuple(i in special_ids for i in input_ids),
            lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=True),
        )

    @torch.inference_mode()
    def detect_captions(
        self, image: np.ndarray, captions: Sequence[str], box_threshold: float, text_threshold: float,
        phrase_rule: str = "words",
    ) -> Boxes:
        """Boxes for each caption on one image, the image encoded once for all of them."""
        # the last images' features are kept: the official size rule asks again about the same test image
        digest = image_digest(image)
        if digest in self._recent:
            pixels, features = self._recent[digest]
        else:
            pixels, features = self._pixel_inputs(image), None
        [boxes] = self._detect_stacked([image], pixels, features, captions, box_threshold, text_threshold, phrase_rule)
        return boxes

    @torch.inference_mode()
    def token_probabilities(self, image: np.ndarray, caption: str) -> tuple[np.ndarray, np.ndarray, CaptionTokens]:
        """The raw prediction for one caption: (queries, tokens) probabilities, (queries, 4) normalised cx cy w h, the tokens.

        For methods with their own box rules (SAA+); the image is encoded once for all its captions, as in `detect_captions`.
        """
        digest = image_digest(image)
        pixels, features = self._recent.get(digest, (None, None))
        if pixels is None:
            pixels = self._pixel_inputs(image)
        with vision_features_reused(self.model, features) as replay:
            text = self.processor.tokenizer(caption, return_tensors="pt")
            ids = text["input_ids"][0, : self.max_text_len].tolist()
            outputs = self.model(**pixels, **{key: value.to(self.device) for key, value in text.items()})
        self.backbone_runs += replay.calls
        if replay.calls:
            self._recent = {digest: (pixels, replay.output)}
        probabilities = outputs.logits.sigmoid().float().cpu().numpy()[0, :, : len(ids)]
        return probabilities, outputs.pred_boxes.float().cpu().numpy()[0], self._tokens(ids)

    def _pixel_inputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """The processor's pixel_values (1, 3, h, w) and pixel_mask (1, h, w) of one image, on the model's device."""
        pixels = self.processor.image_processor(images=Image.fromarray(image), return_tensors="pt", **self.pixel_options)
        return {key: value.to(self.device) for key, value in pixels.items()}

    def _detect_stacked(
        self, images: Sequence[np.ndarray], pixels: dict[str, torch.Tensor], features: object,
        captions: Sequence[str], box_threshold: float, text_threshold: float, phrase_rule: str,
    ) -> list[Boxes]:
        """Boxes of every caption on each of the stacked images, one backbone pass (or `features`) for all."""
        count = len(images)
        parts: list[list[Boxes]] = [[] for _ in images]
        with vision_features_reused(self.model, features) as replay, refinement_eps(self.refinement_eps):
            for caption in captions:
                text = self.processor.tokenizer(caption, return_tensors="pt")
                ids = text["input_ids"][0, : self.max_text_len].tolist()
                # one caption for every image of the stack: its token rows repeated
                text = {key: value.to(self.device).repeat(count, 1) for key, value in text.items()}
                outputs = self.model(**pixels, **text)
                probabilities = outputs.logits.sigmoid().float().cpu()  # (images, queries, max_text_len)
                pred_boxes = outputs.pred_boxes.float().cpu()
                for index, image in enumerate(images):
                    height, width = image.shape[:2]
                    parts[index].append(
                        boxes_from_logits(probabilities[index], pred_boxes[index], self._tokens(ids), box_threshold,
                                          text_threshold, height, width, phrase_rule)
                    )
        self.backbone_runs += replay.calls
        if replay.calls:  # a new pass: its features replace the kept ones, one entry per image
            self._recent = {
                image_digest(image): ({key: value[index : index + 1] for key, value in pixels.items()},
                                      sliced(replay.output, index))
                for index, image in enumerate(images)
            }
        return [concatenate(part) for part in parts]

    def detect_batch(self, images: Sequence[np.ndarray], prompts: Sequence[str], box_threshold: float,
                     text_threshold: float) -> list[Boxes]:
        """`detect` on several images at once: one vision backbone pass per group of equal-size images."""
        from ..stages.detection import captions_for

        return self.detect_captions_batch(images, captions_for(prompts, "dots", self.fits), box_threshold, text_threshold)

    @torch.inference_mode()
    def detect_captions_batch(
        self, images: Sequence[np.ndarray], captions: Sequence[str], box_threshold: float, text_threshold: float,
        phrase_rule: str = "words",
    ) -> list[Boxes]:
        """`detect_captions` for each image, the images stacked into one forward per group of equal processed size.

        Images are stacked only with images the processor resized to the same shape, so no image is
        padded and each sees exactly the input it gets alone (transformers' processor pads mixed sizes
        with a pixel_mask, but the Swin backbone's windows still see the zeros, which moves the boxes).
        """
        inputs = [self._pixel_inputs(image) for image in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, pixels in enumerate(inputs):
            groups.setdefault(tuple(pixels["pixel_values"].shape), []).append(index)
        results: list[Boxes] = [Boxes.empty()] * len(images)
        kept: dict[str, tuple[dict, object]] = {}
        for members in groups.values():
            stacked = {key: torch.cat([inputs[i][key] for i in members]) for key in inputs[members[0]]}
            found = self._detect_stacked([images[i] for i in members], stacked, None, captions, box_threshold,
                                         text_threshold, phrase_rule)
            kept.update(self._recent)
            for index, boxes in zip(members, found):
                results[index] = boxes
        if kept:
            self._recent = kept  # the whole batch's features, for the size rule's second question
        return results


def image_digest(image: np.ndarray) -> str:
    """A key for an image's pixels: the features kept for it are reused only for the very same pixels."""
    return hashlib.sha1(np.ascontiguousarray(image).data, usedforsecurity=False).hexdigest() + str(image.shape)


def sliced(tree: object, index: int) -> object:
    """Row `index` (kept as a batch of one) of every tensor in a nest of tuples and lists (the backbone's output)."""
    if isinstance(tree, torch.Tensor):
        return tree[index : index + 1]
    if isinstance(tree, (list, tuple)):
        return type(tree)(sliced(item, index) for item in tree)
    return tree


@DETECTORS.register("hf-grounding-dino")
def load_hf_grounding_dino(path: Path, device: torch.device, input_size: int = 0) -> HFGroundingDino:
    return HFGroundingDino(path, device, input_size)


register_model_type("detector", "grounding-dino", "hf-grounding-dino", family="grounding-dino")
