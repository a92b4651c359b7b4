"""SAM 2 (Hiera) and EdgeTAM through transformers: the fast profile's box-prompted segmenters.

Both share SAM 2's prompt encoder, mask decoder and processor (transformers' Sam2Processor; EdgeTAM's
auto processor is Sam2Processor too, transformers models/auto/processing_auto.py) and differ only in
the image encoder: Hiera (SAM 2.1 Hiera-T, facebook/sam2.1-hiera-tiny) or RepViT-M1 (EdgeTAM,
yonigozlan/EdgeTAM-hf). As with SAM, the image is encoded once and the boxes decoded together (in
chunks of BOX_CHUNK, which bounds memory and leaves each box's mask as it is);
one mask per box (multimask_output=False), up-sampled to the full image by the processor and
binarised at logit 0 (transformers Sam2Processor.post_process_masks, mask_threshold=0.0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import SEGMENTERS, load_error, register_model_type, require_path


BOX_CHUNK = 16  # boxes decoded and up-sampled to full resolution together


class HFSam2Family:
    """A transformers Sam2Model or EdgeTamModel: one image encoding, all boxes decoded together."""

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

    @torch.inference_mode()
    def segment_boxes(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
        image = image if image.flags.writeable else image.copy()  # torch warns on read-only arrays (results are frozen)
        inputs = self.processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        input_boxes = inputs["input_boxes"].to(self.device)
        chunks = []
        # boxes decoded and up-sampled a chunk at a time: the decoder's per-box feature maps and N float masks at
        # full resolution at once can exhaust memory (a random-weight detector keeps hundreds of boxes); a box's
        # mask does not depend on the other boxes of its chunk
        for start in range(0, input_boxes.shape[1], BOX_CHUNK):
            outputs = self.model(image_embeddings=embeddings, input_boxes=input_boxes[:, start:start + BOX_CHUNK],
                                 multimask_output=False)
            masks = self.processor.post_process_masks(outputs.pred_masks.cpu(), inputs["original_sizes"])[0]
            chunks.append(masks[:, 0])
        return torch.cat(chunks).numpy().astype(bool)


@SEGMENTERS.register("hf-sam2")
def load_hf_sam2(path: Path, device: torch.device) -> HFSam2Family:
    return HFSam2Family(path, device, "Sam2Model", "SAM 2")


@SEGMENTERS.register("hf-edgetam")
def load_hf_edgetam(path: Path, device: torch.device) -> HFSam2Family:
    return HFSam2Family(path, device, "EdgeTamModel", "EdgeTAM")


register_model_type("segmenter", "sam2", "hf-sam2", family="sam2")
register_model_type("segmenter", "edgetam", "hf-edgetam", family="edgetam")
