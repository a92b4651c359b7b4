"""SAM 2 (Hiera) and EdgeTAM through transformers: the fast profile's box-prompted segmenters.

Both share SAM 2's prompt encoder, mask decoder and processor (transformers' Sam2Processor; EdgeTAM's
auto processor is Sam2Processor too, transformers models/auto/processing_auto.py) and differ only in
the image encoder: Hiera (SAM 2.1 Hiera-T, facebook/sam2.1-hiera-tiny) or RepViT-M1 (EdgeTAM,
yonigozlan/EdgeTAM-hf). As with SAM, the image is encoded once (several images in one forward with
`encode_batch`) and the boxes decoded together, in chunks of BOX_CHUNK, which bounds memory and leaves
each box's mask as it is; one mask per box (multimask_output=False).

The processor's post-processing (transformers Sam2ImageProcessor.post_process_masks) is one bilinear
resize of each 256x256 logit map straight to the original H x W, then logits > 0 (mask_threshold 0.0);
`segment_masks` computes that resize only inside each mask's positive region (iapas/acceleration/mask_upsampling.py,
one step instead of SAM's two), `segment_boxes_full_resolution` keeps the processor's own whole-image
path for the naive loop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..acceleration.mask_upsampling import ResizeStep
from ..types import Masks
from .base import SEGMENTERS, load_error, register_model_type, require_path
from .sam import HF_MASK_THRESHOLD, BatchEncoding, Encoding, threshold_upsampled

BOX_CHUNK = 16  # boxes decoded together; their 256x256 logits are small, the decoder's per-box maps are not


class HFSam2Family(BatchEncoding):
    """A transformers Sam2Model or EdgeTamModel: images encoded once (or in batches), all boxes decoded together."""

    def __init__(self, path: Path, device: torch.device, model_class: str, what: str) -> None:
        import transformers
        from transformers import Sam2Processor

        require_path(path, what, expect_dir=True)
        try:
            self.processor = Sam2Processor.from_pretrained(path, local_files_only=True)
            self.model = getattr(transformers, model_class).from_pretrained(path, local_files_only=True)
        except Exception as error:  # safetensors, torch and transformers each raise their own types for a bad file
            raise load_error(what, path, error) from None
        self.model.to(device).eval()
        self.device = device

    def encoder_inputs(self, image: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S): the processor's pixel values for `image`, on the model's device."""
        return self.processor(images=self._writeable(image), return_tensors="pt")["pixel_values"].to(self.device)

    def encode(self, stacked: torch.Tensor) -> list[torch.Tensor]:
        """The multi-level image embeddings (with SAM 2's no-memory embedding) of the stacked inputs."""
        return self.model.get_image_embeddings(stacked)

    def int8_modules(self) -> list[torch.nn.Module]:
        """The image encoder (Hiera or RepViT): most of the time; the prompt encoder and decoder stay float32."""
        return [self.model.vision_encoder]

    @torch.inference_mode()
    def _logits(self, image: np.ndarray, xyxy: np.ndarray, encoding: Encoding | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N, 256, 256) low-resolution logits of every box and the original (H, W)."""
        boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
        inputs = self.processor(images=self._writeable(image), input_boxes=[boxes.tolist()], return_tensors="pt")
        if encoding is None:
            embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        else:
            embeddings = encoding.embedding
        input_boxes = inputs["input_boxes"].to(self.device)
        chunks = [
            self.model(image_embeddings=embeddings, input_boxes=input_boxes[:, start : start + BOX_CHUNK],
                       multimask_output=False).pred_masks[0, :, 0]
            for start in range(0, input_boxes.shape[1], BOX_CHUNK)
        ]
        original = tuple(int(v) for v in inputs["original_sizes"][0])
        # left on the model's device: the region-only up-sampling runs there too (on a GPU, at low resolution)
        return torch.cat(chunks).float(), original  # type: ignore[return-value]

    def segment_masks(self, image: np.ndarray, xyxy: np.ndarray) -> Masks:
        """Masks of every box, up-sampled only inside each mask's positive region."""
        return self._region_masks(*self._logits(image, xyxy))

    def segment_masks_encoded(self, image: np.ndarray, encoding: Encoding, xyxy: np.ndarray) -> Masks:
        """`segment_masks` on an image whose embeddings `encode_batch` already computed (no encoder to shadow here)."""
        return self._region_masks(*self._logits(image, xyxy, encoding))

    @staticmethod
    def _region_masks(logits: torch.Tensor, original: tuple[int, int]) -> Masks:
        """The processor's one resize to the original size, computed only inside each positive region."""
        return threshold_upsampled(logits, [ResizeStep(original)], HF_MASK_THRESHOLD)

    def segment_boxes(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        return self.segment_masks(image, xyxy).data

    @torch.inference_mode()
    def segment_boxes_full_resolution(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """The processor's own post_process_masks: every mask up-sampled over the whole image (the naive loop's path)."""
        logits, original = self._logits(image, xyxy)
        masks = self.processor.post_process_masks(logits[None, :, None].cpu(), [original], mask_threshold=HF_MASK_THRESHOLD)[0]
        return masks[:, 0].numpy().astype(bool)

    @staticmethod
    def _writeable(image: np.ndarray) -> np.ndarray:
        return image if image.flags.writeable else image.copy()  # torch warns on read-only arrays (results are frozen)


@SEGMENTERS.register("hf-sam2")
def load_hf_sam2(path: Path, device: torch.device) -> HFSam2Family:
    return HFSam2Family(path, device, "Sam2Model", "SAM 2")


@SEGMENTERS.register("hf-edgetam")
def load_hf_edgetam(path: Path, device: torch.device) -> HFSam2Family:
    return HFSam2Family(path, device, "EdgeTamModel", "EdgeTAM")


register_model_type("segmenter", "sam2", "hf-sam2", family="sam2")
register_model_type("segmenter", "edgetam", "hf-edgetam", family="edgetam")
