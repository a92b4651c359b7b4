"""The exportable encoders of each backend: which torch module, its fixed input shapes, and how a Runner replaces it.

Only the image encoders are exported: they are much of the compute (SAM ViT-B's encoder takes about 12 s
of a 1024x1024 image on 2 CPU cores, issue 13), take nothing but the image,
and hand the rest of the model one tensor structure that a Runner's outputs rebuild exactly. The prompt
encoders, SAM's mask decoder and Grounding DINO's text and fusion layers stay in torch: they depend on the
boxes and captions, which vary in number and length per image.

A part's `install` swaps the backend's encoder submodule for a parameter-free module that calls the
Runner; the backend's own code (SamPredictor.set_image, SamModel.get_image_embeddings, Grounding DINO's
forward and its feature replay) runs unchanged around it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ...registry import Registry
from .formats import Runner, Signature

Shape = tuple[int, ...]
RunnerFor = Callable[[tuple[Shape, ...]], Runner]  # input shapes -> a Runner exported at those shapes


def _arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in tensors]


class ExportedSamEncoder(torch.nn.Module):
    """segment_anything's ImageEncoderViT as a Runner: (1, 3, S, S) normalised padded pixels -> embeddings."""

    def __init__(self, runner: Runner, img_size: int) -> None:
        super().__init__()
        self.runner = runner
        self.img_size = img_size  # Sam.preprocess pads to it and ResizeLongestSide resizes to it

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runner(_arrays(pixels.float()))[0]).to(pixels.device)


class ExportedHFSamVision(torch.nn.Module):
    """transformers' SamVisionEncoder as a Runner; returns a 1-tuple, as SamModel.get_image_embeddings reads [0]."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> tuple[torch.Tensor]:
        return (torch.from_numpy(self.runner(_arrays(pixel_values.float()))[0]).to(pixel_values.device),)


class HFSamVisionOutput(torch.nn.Module):
    """The HF SAM vision encoder with only its embeddings as output (the traced graph drops the rest)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values)[0]


class FlatGroundingDinoBackbone(torch.nn.Module):
    """Grounding DINO's backbone (Swin + sine positions) with its ([(features, mask)], [positions]) output flattened."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels, positions = self.backbone(pixel_values, pixel_mask)
        return (*[f for f, _ in levels], *[m for _, m in levels], *positions)


class ExportedGroundingDinoBackbone(torch.nn.Module):
    """Grounding DINO's backbone as Runners, one per input size (exported on first use of each size)."""

    def __init__(self, runner_for: RunnerFor, levels: int, position_embedding: torch.nn.Module) -> None:
        super().__init__()
        self.runner_for = runner_for
        # Grounding DINO's forward embeds the positions of its extra, down-sampled levels with the backbone's own module
        self.position_embedding = position_embedding
        self.levels = levels
        self._runners: dict[tuple[Shape, ...], Runner] = {}

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
        shapes = (tuple(pixel_values.shape), tuple(pixel_mask.shape))
        if shapes not in self._runners:
            self._runners[shapes] = self.runner_for(shapes)
        outputs = self._runners[shapes](_arrays(pixel_values.float(), pixel_mask.long()))
        tensors = [torch.from_numpy(np.ascontiguousarray(o)).to(pixel_values.device) for o in outputs]
        n = self.levels
        features, masks, positions = tensors[:n], [m.bool() for m in tensors[n:2 * n]], tensors[2 * n:]
        return list(zip(features, masks)), positions


@dataclass(frozen=True)
class EncoderPart:
    """One exportable encoder of a backend.

    `shapes(backend, image_size)` gives the fixed input shapes the encoder sees for a square image of that
    side (SAM: always its own padded square; Grounding DINO: its processor's resize of that image);
    `signature(backend, shapes)` names the inputs and outputs; `module(backend)` is the torch module to
    export; `install(backend, runner_for)` puts the exported Runner in the torch encoder's place.
    """

    name: str
    applies: Callable[[Any], bool]
    shapes: Callable[[Any, int], tuple[Shape, ...]]
    signature: Callable[[Any, tuple[Shape, ...]], Signature]
    module: Callable[[Any], torch.nn.Module]
    install: Callable[[Any, RunnerFor], None]

    def examples(self, signature: Signature, seed: int = 0) -> list[torch.Tensor]:
        """Inputs of the signature's shapes to trace on: random pixels, an all-valid mask."""
        generator = torch.Generator().manual_seed(seed)
        return [torch.ones(shape, dtype=torch.long) if name == "pixel_mask" else torch.randn(shape, generator=generator)
                for name, shape in signature.inputs]


PARTS: Registry[EncoderPart] = Registry("exportable encoder")


def _is(class_name: str) -> Callable[[Any], bool]:
    return lambda backend: type(backend).__name__ == class_name


def _sam_shapes(backend: Any, image_size: int) -> tuple[Shape, ...]:
    side = backend.predictor.model.image_encoder.img_size  # 1024 for the released SAMs; every image is padded to it
    return ((1, 3, side, side),)


def _embeddings_signature(backend: Any, shapes: tuple[Shape, ...]) -> Signature:
    return Signature((("pixel_values", shapes[0]),), ("image_embeddings",))


def _install_sam(backend: Any, runner_for: RunnerFor) -> None:
    side = backend.predictor.model.image_encoder.img_size
    backend.predictor.model.image_encoder = ExportedSamEncoder(runner_for(((1, 3, side, side),)), side)


def _hf_sam_shapes(backend: Any, image_size: int) -> tuple[Shape, ...]:
    side = backend.model.config.vision_config.image_size
    return ((1, 3, side, side),)


def _install_hf_sam(backend: Any, runner_for: RunnerFor) -> None:
    side = backend.model.config.vision_config.image_size
    backend.model.vision_encoder = ExportedHFSamVision(runner_for(((1, 3, side, side),)))


def _grounding_dino_levels(backend: Any) -> int:
    backbone = backend.model.model.backbone
    if isinstance(backbone, ExportedGroundingDinoBackbone):  # already replaced: it knows how many levels it rebuilds
        return backbone.levels
    return len(backbone.conv_encoder.intermediate_channel_sizes)


def grounding_dino_input_shapes(backend: Any, image_size: int) -> tuple[Shape, Shape]:
    """The (pixel_values, pixel_mask) shapes Grounding DINO's processor makes of an image_size square image."""
    from PIL import Image

    pixels = backend.processor.image_processor(images=Image.new("RGB", (image_size, image_size)), return_tensors="pt")
    return tuple(pixels["pixel_values"].shape), tuple(pixels["pixel_mask"].shape)


def _grounding_dino_signature(backend: Any, shapes: tuple[Shape, ...]) -> Signature:
    n = _grounding_dino_levels(backend)
    outputs = (*[f"features_{i}" for i in range(n)], *[f"mask_{i}" for i in range(n)], *[f"position_{i}" for i in range(n)])
    return Signature((("pixel_values", shapes[0]), ("pixel_mask", shapes[1])), outputs)


def _install_grounding_dino(backend: Any, runner_for: RunnerFor) -> None:
    backbone = backend.model.model.backbone
    backend.model.model.backbone = ExportedGroundingDinoBackbone(runner_for, _grounding_dino_levels(backend),
                                                                 backbone.position_embedding)


PARTS.register("sam-image-encoder")(EncoderPart(
    "sam-image-encoder", _is("OriginalSam"), _sam_shapes, _embeddings_signature,
    lambda backend: backend.predictor.model.image_encoder, _install_sam))
PARTS.register("hf-sam-vision-encoder")(EncoderPart(
    "hf-sam-vision-encoder", _is("HFSam"), _hf_sam_shapes, _embeddings_signature,
    lambda backend: HFSamVisionOutput(backend.model.vision_encoder), _install_hf_sam))
PARTS.register("grounding-dino-backbone")(EncoderPart(
    "grounding-dino-backbone", _is("HFGroundingDino"), grounding_dino_input_shapes, _grounding_dino_signature,
    lambda backend: FlatGroundingDinoBackbone(backend.model.model.backbone), _install_grounding_dino))


def parts_of(backend: Any) -> list[EncoderPart]:
    """The exportable encoders of a loaded backend (none for a backend without any)."""
    return [part for name in PARTS.names() if (part := PARTS.get(name)).applies(backend)]

