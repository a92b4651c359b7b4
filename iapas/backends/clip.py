"""CLIP from a transformers directory (or an open_clip file, converted once), opened up for tokens, layer features and prompt embeddings."""
from __future__ import annotations

from pathlib import Path
from typing import ContextManager, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import load_error, quiet_loading, require_path, warn_if_demo
from ..errors import WeightsError


def converted_openclip_dir(checkpoint: Path) -> Path:
    """The transformers conversion of an open_clip or OpenAI file, made on first use as <file>.hf/ and reused while the
    converter's version and the file's sha256 stay those it recorded; the activation is the file's family's."""
    from .openclip_convert import CONVERTER_VERSION, convert_openclip_checkpoint

    from .groundingdino_convert import converted_once

    return converted_once(checkpoint, lambda partial: convert_openclip_checkpoint(checkpoint, partial, activation="auto"),
                          "open_clip", CONVERTER_VERSION)


class ClipBackbone(torch.nn.Module):
    """CLIPModel plus the pieces the CLIP methods need; all CLIP weights are frozen.

    `precision` (fp32 | bf16 | fp16, iapas/acceleration/precision.py) is the autocast the CLIP methods' forwards run
    under (`autocast()`, entered once for every method by `methods/batching.py`); fp16 on a CPU is refused
    here, before the weights load, with the IAP-AS pipeline's message.
    """

    def __init__(self, path: Path, device: torch.device | str = "cpu", precision: str = "fp32") -> None:
        super().__init__()
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        from ..acceleration.precision import check_precision

        check_precision(precision, torch.device(device))
        self.precision = precision
        self.int8 = False  # set by `quantise_encoders`
        path = Path(path)
        if path.is_file():  # an open_clip checkpoint: convert it once into a transformers directory beside it
            path = converted_openclip_dir(path)
        require_path(path, "CLIP", expect_dir=True)
        warn_if_demo(path)
        try:
            with quiet_loading():
                self.clip = CLIPModel.from_pretrained(path, local_files_only=True)
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                self.image_processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        except Exception as error:  # safetensors, torch and transformers each raise their own types for a bad file
            raise load_error("CLIP", path, error) from None
        self.clip.requires_grad_(False).eval()
        self.name = path.name
        vision = self.clip.config.vision_config
        self.image_size, self.patch_size = int(vision.image_size), int(vision.patch_size)
        self.depth = int(vision.num_hidden_layers)
        self.native_size = self.image_size  # the size CLIP was trained at; `use_input_size` may change image_size
        self.register_buffer("mean", torch.tensor(self.image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.image_processor.image_std).view(1, 3, 1, 1), persistent=False)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def missing_layers(self, layers: Iterable[int]) -> list[int]:
        """The 1-based vision layers among `layers` this CLIP does not have (each method words its own error)."""
        return [layer for layer in layers if not 1 <= layer <= self.depth]

    def require_layers(self, layers: Iterable[int]) -> None:
        """Raise a one-line WeightsError naming the first of `layers` this CLIP does not have."""
        bad = self.missing_layers(layers)
        if bad:
            raise WeightsError(f"ViT layer {bad[0]} does not exist: CLIP {self.name!r} has {self.depth} layers")

    def require_text_depth(self, depth: int) -> None:
        """Raise a one-line WeightsError unless deep text prompts over `depth` layers fit this CLIP's text encoder."""
        if not 1 <= depth <= self.text_depth:
            raise WeightsError(f"text prompt depth {depth} does not fit CLIP {self.name!r} ({self.text_depth} text layers)")

    def autocast(self) -> ContextManager:
        """The context the CLIP forwards run under: torch.autocast at `precision` (nothing for fp32)."""
        from ..acceleration.precision import autocast

        return autocast(self.precision, self.device)

    def quantise_encoders(self) -> "ClipBackbone":
        """int8 dynamic quantisation of the vision and text transformers' linear layers (CPU only, fp32 only); returns self.

        Only the encoder layers (attention projections and MLPs: nearly all of CLIP's time) are swapped; the
        embeddings, norms and the two projections stay float32, so the methods that read the projections'
        weights (GenCLIP starts its MLP_I from `visual_projection`) still can. Dynamic int8 layers take float32
        inputs, so bf16/fp16 autocast, which hands them half-precision activations, is refused with it.
        """
        from ..acceleration.quantisation import quantise_linear_layers

        check_int8(self.device, self.precision)
        quantise_linear_layers(self.clip.vision_model.encoder)
        quantise_linear_layers(self.clip.text_model.encoder)
        self.int8 = True
        return self

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def embed_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    def preprocess(self, images: Sequence[np.ndarray], size: int | None = None) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels: the whole image resized to `size` (default the model's; no crop, so no border is lost).

        The one resize of every CLIP method: bicubic with antialiasing, as PIL filters when it shrinks
        (`prompt_learning.vision.reference_pixels`); without it a shrink aliases fine texture into the maps.
        """
        from ..prompt_learning.vision import reference_pixels

        return reference_pixels(self, images, size or self.image_size)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 1 + g*g, D) class and patch tokens with positional embeddings, before the pre-norm."""
        embeddings = self.clip.vision_model.embeddings
        patches = embeddings.patch_embedding(pixels.to(embeddings.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = embeddings.class_embedding.expand(len(pixels), 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embeddings(patches.shape[1])[None].to(patches.dtype)

    def position_embeddings(self, patch_count: int) -> torch.Tensor:
        """(1 + patch_count, D) position embeddings; a grid other than CLIP's own is interpolated bicubically.

        GenCLIP and AnomalyCLIP run ViT-L/14-336 at 518 px (a 37 x 37 grid instead of 24 x 24); the
        class position stays as it is and the grid positions are resized as an image.
        """
        weight = self.clip.vision_model.embeddings.position_embedding.weight
        if patch_count == weight.shape[0] - 1:
            return weight
        native, grid = round((weight.shape[0] - 1) ** 0.5), round(patch_count ** 0.5)
        positions = weight[1:].T.reshape(1, -1, native, native).float()
        positions = F.interpolate(positions, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([weight[:1], positions.reshape(-1, grid * grid).T.to(weight.dtype)])

    def use_input_size(self, size: int) -> "ClipBackbone":
        """Run the vision tower at `size` px from now on (`preprocess`, `grid`, training batches); returns self."""
        if size % self.patch_size:
            raise WeightsError(f"input size {size} is not a multiple of the CLIP's patch size {self.patch_size}")
        self.image_size = int(size)
        return self

    def encode_tokens(
        self, tokens: torch.Tensor, layers: Sequence[int] = (), prompts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the vision transformer on any token subset: projected CLS embedding and hidden states after `layers` (1-based).

        `prompts` (B, P, L, D) are deep visual prompts: layer i <= P sees its own L tokens appended to the
        sequence, in place of the previous layer's; after layer P the last ones stay in the sequence to the
        last layer (they are kept, not dropped), and the returned hidden states never hold them.
        """
        hidden = self.clip.vision_model.pre_layrnorm(tokens)
        count = tokens.shape[1]
        depth = 0 if prompts is None else prompts.shape[1]
        collected = []
        for index, layer in enumerate(self.clip.vision_model.encoder.layers, start=1):
            if index <= depth:
                hidden = torch.cat([hidden[:, :count], prompts[:, index - 1].to(hidden.dtype)], dim=1)
            output = layer(hidden, None)
            hidden = output[0] if isinstance(output, tuple) else output
            if index in layers:
                collected.append(hidden[:, :count])
        return self.project(hidden[:, 0]), collected

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Post-norm and visual projection of (..., D) tokens into the joint space (not normalised)."""
        return self.clip.visual_projection(self.clip.vision_model.post_layernorm(hidden))

    def encode_text(self, sentences: Sequence[str]) -> torch.Tensor:
        """(N, E) unit text embeddings."""
        tokens = self.tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self.clip.get_text_features(**tokens)
        return F.normalize(getattr(features, "pooler_output", features).float(), dim=-1)

    def encode_text_embeddings(
        self, embeddings: torch.Tensor, eos_positions: torch.Tensor, deep_prompts: torch.Tensor | None = None, prompt_start: int = 1,
        normalize: bool = True,
    ) -> torch.Tensor:
        """(N, E) unit text embeddings from word embeddings (N, L, D), for learned prompt tokens.

        `deep_prompts` (N, P, K, D) replace the K tokens from `prompt_start` before layers 2 .. P + 1
        (layer 1's prompts are already in `embeddings`). `normalize=False` keeps the projected length,
        for methods that average embeddings before normalising (FAPrompt).
        """
        text = self.clip.text_model
        length = embeddings.shape[1]
        hidden = embeddings + text.embeddings.position_embedding.weight[:length][None]
        causal = torch.full((length, length), float("-inf"), device=embeddings.device).triu(1)[None, None].to(hidden.dtype)
        depth = 0 if deep_prompts is None else deep_prompts.shape[1]
        for index, layer in enumerate(text.encoder.layers):
            if 1 <= index <= depth:
                end = prompt_start + deep_prompts.shape[2]
                hidden = torch.cat([hidden[:, :prompt_start], deep_prompts[:, index - 1].to(hidden.dtype), hidden[:, end:]], dim=1)
            output = layer(hidden, causal)
            hidden = output[0] if isinstance(output, tuple) else output
        hidden = text.final_layer_norm(hidden)
        pooled = hidden[torch.arange(len(hidden), device=hidden.device), eos_positions]
        projected = self.clip.text_projection(pooled).float()
        return F.normalize(projected, dim=-1) if normalize else projected

    def text_features(self, sentences: Sequence[str]) -> torch.Tensor:
        """(N, E) projected text embeddings, not normalised (WinCLIP averages them before normalising)."""
        tokens = self.tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self.clip.get_text_features(**tokens)
        return getattr(features, "pooler_output", features).float()

    def patch_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., P, D) post-normed patch tokens of last-layer hidden states (B, 1 + P, D), unprojected as open_clip returns them."""
        return self.clip.vision_model.post_layernorm(hidden[..., 1:, :])

    @property
    def text_depth(self) -> int:
        return int(self.clip.config.text_config.num_hidden_layers)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()


def check_int8(device: torch.device, precision: str) -> None:
    """Refuse (one line) int8 CLIP encoders off the CPU, or beside a half-precision autocast."""
    from ..errors import ConfigError
    from ..acceleration.quantisation import check_int8_precision

    if device.type != "cpu":
        raise ConfigError(f"--int8 runs on the CPU only, but the device is {device}: add --device cpu or drop --int8")
    check_int8_precision(precision)


def clip_int8(config) -> bool:
    """Whether the config asks the CLIP methods for int8: `--int8` sets both keys; either one in a config file counts."""
    return bool(config.detection.int8 or config.masking.int8)


def configured_backbone(path: Path, config) -> ClipBackbone:
    """The CLIP at `path` on the config's device, at its `precision`, its encoders quantised when it asks for int8.

    Both refusals (fp16 on a CPU; int8 off the CPU or with bf16/fp16) come before the weights load.
    """
    from ..device import resolve_device
    from ..acceleration.precision import check_precision

    device = resolve_device(config.device)
    check_precision(config.precision, device)
    if clip_int8(config):
        check_int8(device, config.precision)
    backbone = ClipBackbone(path, device, config.precision)
    return backbone.quantise_encoders() if clip_int8(config) else backbone


def backbone_for_config(config) -> ClipBackbone:
    """The frozen CLIP the config names (`clip_methods.weights`), or the first one found in its weights dir."""
    from ..weights.manifest import chosen_or_found

    path = chosen_or_found("clip", config.clip_methods.weights, config.weights_dir)
    return configured_backbone(path, config)


def backbone_preferring(config, preferred: Sequence[str]) -> ClipBackbone:
    """The config's CLIP if it names one, else the first of the `preferred` manifest entries present, else any CLIP found."""
    from ..weights.manifest import is_present, load_manifest

    if not config.clip_methods.weights:
        entries = {entry.name: entry for entry in load_manifest()}
        for name in preferred:
            entry = entries.get(name)
            if entry is not None and is_present(entry, Path(config.weights_dir)):
                return configured_backbone(entry.location(Path(config.weights_dir)), config)
    return backbone_for_config(config)
