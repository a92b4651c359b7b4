"""SAM from Meta's original .pth checkpoints (segment-anything) or a transformers SamModel directory."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ContextManager, Iterator

import numpy as np
import torch

from ..errors import CorruptWeightsError, WeightsError
from ..acceleration.mask_upsampling import ResizeStep, sam_steps, upsample_positive
from ..types import Masks
from .base import SEGMENTERS, load_error, register_model_type, require_path
from .sam_attention import install_fused_attention, reference_attention

SAM_DECODER_HEADS = 8  # fixed in every released SAM; attention heads leave no trace in the weights
KNOWN_VARIANTS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
HF_MASK_THRESHOLD = 0.0  # transformers SamImageProcessor.post_process_masks' default mask_threshold


@dataclass(frozen=True)
class SamGeometry:
    """The architecture of a SAM checkpoint, read off its state dict."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: int
    window_size: int
    global_attn_indexes: tuple[int, ...]
    mlp_ratio: float
    prompt_dim: int
    mask_in_chans: int
    decoder_depth: int
    decoder_mlp_dim: int
    iou_head_hidden_dim: int

    @property
    def variant(self) -> str:
        """vit_b, vit_l, vit_h for the released models, "custom" for anything else."""
        return KNOWN_VARIANTS.get(self.embed_dim, "custom") if self.depth in (12, 24, 32) else "custom"


def infer_sam_geometry(state: dict[str, torch.Tensor]) -> SamGeometry:
    """Read every architecture number of a SAM from its weights (vit_b/l/h and smaller ones alike)."""
    try:
        patch = state["image_encoder.patch_embed.proj.weight"]
        embed_dim, patch_size = patch.shape[0], patch.shape[2]
        grid = state["image_encoder.pos_embed"].shape[1]
        blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
        rel_sizes = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in blocks]
        head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        global_blocks = tuple(i for i, size in zip(blocks, rel_sizes) if size == 2 * grid - 1)
        window_sizes = {(size + 1) // 2 for size in rel_sizes if size != 2 * grid - 1}
        decoder_layers = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
        return SamGeometry(
            embed_dim=embed_dim,
            depth=len(blocks),
            num_heads=embed_dim // head_dim,
            patch_size=patch_size,
            image_size=grid * patch_size,
            window_size=window_sizes.pop() if window_sizes else 0,
            global_attn_indexes=global_blocks,
            mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
            prompt_dim=state["image_encoder.neck.0.weight"].shape[0],
            mask_in_chans=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            decoder_depth=len(decoder_layers),
            decoder_mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        )
    except (KeyError, IndexError) as error:
        raise WeightsError(f"not a SAM checkpoint: the state dict lacks {error}") from None


def build_sam(geometry: SamGeometry) -> torch.nn.Module:
    """An untrained segment_anything.Sam with the given geometry."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = geometry.image_size // geometry.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=geometry.image_size,
            patch_size=geometry.patch_size,
            embed_dim=geometry.embed_dim,
            depth=geometry.depth,
            num_heads=geometry.num_heads,
            mlp_ratio=geometry.mlp_ratio,
            out_chans=geometry.prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=geometry.window_size,
            global_attn_indexes=geometry.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=geometry.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(geometry.image_size, geometry.image_size),
            mask_in_chans=geometry.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=geometry.decoder_depth,
                embedding_dim=geometry.prompt_dim,
                mlp_dim=geometry.decoder_mlp_dim,
                num_heads=SAM_DECODER_HEADS,
            ),
            transformer_dim=geometry.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=geometry.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def read_checkpoint(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a .pth state dict on the CPU, tensors only, or raise a one-line WeightsError.

    `mmap` maps the file instead of reading it, so what is never used (an optimizer's state saved beside
    the model, as in RAM's 5.6 GB checkpoint) is never read into memory.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many kinds for a corrupt or foreign file
        raise CorruptWeightsError(f"cannot read checkpoint {path}: {str(error).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict of tensors")
    return state


@dataclass(frozen=True)
class Encoding:
    """One image's image-encoder input (as the backend prepares it) and the embedding a batched pass gave it."""

    inputs: torch.Tensor  # (1, 3, S, S): exactly what the backend's own path feeds its image encoder
    embedding: object  # the encoder's output for that row (a tensor, or transformers' output with batch 1)


def _row(output: object, index: int) -> object:
    """Row `index` of an encoder output, kept as a batch of one (a tensor, a list of per-level tensors, or a ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output[index : index + 1]
    if isinstance(output, list):
        return [level[index : index + 1] for level in output]
    fields = {key: value[index : index + 1] for key, value in output.items() if isinstance(value, torch.Tensor)}
    return type(output)(**fields)


@contextmanager
def encoder_reused(encoder: torch.nn.Module, encoding: Encoding) -> Iterator[None]:
    """Within the block, the image encoder returns the batched pass's embedding when fed that very image.

    The backends' own `segment_boxes` (their preprocessing, decoding and mask post-processing, left as
    they are) run unchanged; only the encoder forward, the costly part, is answered from the batch. An
    input that is not exactly the encoded one runs the real encoder, so the shortcut can never give a
    wrong image's embedding. The instance's forward is shadowed for the block only.
    """
    real = encoder.forward

    def forward(pixels: torch.Tensor, *args: object, **kwargs: object) -> object:
        if pixels.shape == encoding.inputs.shape and torch.equal(pixels, encoding.inputs):
            return encoding.embedding
        return real(pixels, *args, **kwargs)

    encoder.forward = forward
    try:
        yield
    finally:
        del encoder.forward  # the class's forward again


class BatchEncoding:
    """Batched image encoding shared by the SAM backends: encode a batch in one forward, decode each image alone."""

    def encoder(self) -> torch.nn.Module:
        raise NotImplementedError

    def encoder_inputs(self, image: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S): what this backend's segment_boxes feeds its image encoder for `image`."""
        raise NotImplementedError

    def encode(self, stacked: torch.Tensor) -> object:
        """The image encoder's output for stacked (B, 3, S, S) inputs."""
        return self.encoder()(stacked)

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> list[Encoding]:
        """Each image's embedding from one image-encoder forward over the stacked (B, 3, S, S) inputs."""
        inputs = [self.encoder_inputs(image) for image in images]
        if not inputs:
            return []
        output = self.encode(torch.cat(inputs))
        return [Encoding(row, _row(output, index)) for index, row in enumerate(inputs)]

    def segment_masks_encoded(self, image: np.ndarray, encoding: Encoding, xyxy: np.ndarray) -> Masks:
        """`segment_masks` (with each mask's region) on an image whose embedding `encode_batch` already computed."""
        with encoder_reused(self.encoder(), encoding):
            return self.segment_masks(image, xyxy)  # type: ignore[attr-defined]


class OriginalSam(BatchEncoding):
    """segment_anything's SamPredictor: one image encoding, then every box decoded in one batch."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from segment_anything import SamPredictor

        require_path(path, "SAM", expect_dir=False)
        state = read_checkpoint(path)
        self.geometry = infer_sam_geometry(state)
        model = build_sam(self.geometry)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise WeightsError(f"{path} does not match a SAM architecture: {str(error).splitlines()[0][:200]}") from None
        # fused attention kernels in the encoder (iapas/backends/sam_attention.py); `reference_kernels` undoes them
        install_fused_attention(model.image_encoder)
        self.predictor = SamPredictor(model.to(device).eval())
        self.device = device

    def reference_kernels(self) -> ContextManager[None]:
        """Within the block, the encoder runs segment_anything's own attention (the naive loop's SAM)."""
        return reference_attention(self.predictor.model.image_encoder)

    def encoder(self) -> torch.nn.Module:
        return self.predictor.model.image_encoder

    def encoder_inputs(self, image: np.ndarray) -> torch.Tensor:
        # segment_anything predictor.py set_image + set_torch_image: longest side resized, then Sam.preprocess
        # (normalised, zero-padded to the square), which is what the encoder is called with
        resized = torch.as_tensor(self.predictor.transform.apply_image(image), device=self.device)
        return self.predictor.model.preprocess(resized.permute(2, 0, 1).contiguous()[None])

    @torch.inference_mode()
    def segment_masks(self, image: np.ndarray, xyxy: np.ndarray) -> Masks:
        """Masks of every box, up-sampled only inside each mask's positive region (iapas/acceleration/mask_upsampling.py)."""
        self.predictor.set_image(image, image_format="RGB")
        try:
            model = self.predictor.model
            boxes = self.predictor.transform.apply_boxes_torch(self._boxes(xyxy), image.shape[:2])
            # segment_anything/predictor.py predict_torch up to its postprocess_masks call, which we replace
            sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
            low_res, _ = model.mask_decoder(
                image_embeddings=self.predictor.features,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            steps = sam_steps(self.predictor.input_size, self.predictor.original_size, model.image_encoder.img_size)
            return threshold_upsampled(low_res[:, 0], steps, model.mask_threshold)
        finally:
            self.predictor.reset_image()

    def segment_boxes(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        return self.segment_masks(image, xyxy).data

    @torch.inference_mode()
    def segment_boxes_full_resolution(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """SAM's own post-processing: every mask up-sampled over the whole image (the official code's path)."""
        height, width = image.shape[:2]
        self.predictor.set_image(image, image_format="RGB")
        boxes = self.predictor.transform.apply_boxes_torch(self._boxes(xyxy), (height, width))
        masks, _, _ = self.predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
        self.predictor.reset_image()
        return masks[:, 0].cpu().numpy().astype(bool)

    def int8_modules(self) -> list[torch.nn.Module]:
        """The image encoder: nearly all of SAM's time; the small mask decoder stays float32 (iapas/acceleration/quantisation.py)."""
        return [self.predictor.model.image_encoder]

    def _boxes(self, xyxy: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.array(xyxy, np.float32), device=self.device)


class HFSam(BatchEncoding):
    """transformers' SamModel: image embeddings computed once, all boxes decoded together."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from transformers import SamModel, SamProcessor

        require_path(path, "SAM", expect_dir=True)
        try:
            self.processor = SamProcessor.from_pretrained(path, local_files_only=True)
            self.model = SamModel.from_pretrained(path, local_files_only=True)
        except Exception as error:  # safetensors, torch and transformers each raise their own types for a bad file
            raise load_error("SAM", path, error) from None
        self.model.to(device).eval()
        self.device = device

    def encoder(self) -> torch.nn.Module:
        return self.model.vision_encoder  # SamModel.get_image_embeddings runs it on pixel_values

    def encoder_inputs(self, image: np.ndarray) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"].to(self.device)

    def int8_modules(self) -> list[torch.nn.Module]:
        """The vision encoder: nearly all of SAM's time; the small mask decoder stays float32 (iapas/acceleration/quantisation.py)."""
        return [self.model.vision_encoder]

    @torch.inference_mode()
    def _decode(self, image: np.ndarray, xyxy: np.ndarray) -> tuple[torch.Tensor, dict]:
        """(N, 256, 256) low-resolution logits of every box, and the processor's inputs (sizes)."""
        inputs = self.processor(images=image, input_boxes=[np.asarray(xyxy, np.float32).tolist()], return_tensors="pt")
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        outputs = self.model(
            image_embeddings=embeddings, input_boxes=inputs["input_boxes"].to(self.device), multimask_output=False
        )
        return outputs.pred_masks[0, :, 0], inputs

    @torch.inference_mode()
    def segment_masks(self, image: np.ndarray, xyxy: np.ndarray) -> Masks:
        """Masks of every box, up-sampled only inside each mask's positive region (iapas/acceleration/mask_upsampling.py)."""
        logits, inputs = self._decode(image, xyxy)
        pad = self.processor.image_processor.pad_size  # transformers SamImageProcessor.post_process_masks' stages
        steps = [ResizeStep((pad["height"], pad["width"]), tuple(int(v) for v in inputs["reshaped_input_sizes"][0])),
                 ResizeStep(tuple(int(v) for v in inputs["original_sizes"][0]))]
        return threshold_upsampled(logits, steps, HF_MASK_THRESHOLD)

    def segment_boxes(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        return self.segment_masks(image, xyxy).data

    @torch.inference_mode()
    def segment_boxes_full_resolution(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """The processor's own post_process_masks: every mask up-sampled over the whole image."""
        logits, inputs = self._decode(image, xyxy)
        masks = self.processor.image_processor.post_process_masks(
            logits[None, :, None].cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        return masks[:, 0].numpy().astype(bool)


def threshold_upsampled(logits: torch.Tensor, steps: list[ResizeStep], threshold: float) -> Masks:
    """Region-only up-sampling; it relies on the threshold being 0, SAM's mask_threshold."""
    if threshold != 0.0:
        raise WeightsError(f"SAM's mask threshold is {threshold}, but region-only up-sampling needs 0.0")
    return upsample_positive(logits, steps)


@SEGMENTERS.register("sam")
def load_original_sam(path: Path, device: torch.device) -> OriginalSam:
    return OriginalSam(path, device)


@SEGMENTERS.register("hf-sam")
def load_hf_sam(path: Path, device: torch.device) -> HFSam:
    return HFSam(path, device)


register_model_type("segmenter", "sam", "hf-sam", family="sam")
