"""The IAP-AS segmentation pipeline and its Python API."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from ...backends import Detector, Segmenter, load_detector, load_segmenter
from ...calibration import Calibration
from ...config import Config
from ...device import resolve_device
from ...errors import IapasError, ImageProcessingError, InputImageError
from ...graph import StageGraph
from ...images import LoadedImage, Window, check_shape, load_image, parse_window, to_rgb
from ...stages import DetectStage, MaskStage, NmsStage, ScoreStage, SizeFilterStage
from ...types import Boxes, Masks, Result
from ...weights import chosen_or_found

if TYPE_CHECKING:
    from .preprocess import ImageSource

ImageInput = str | Path | np.ndarray | Image.Image
GRAPH_INPUTS = ("image", "prompts", "box_threshold", "text_threshold", "size_threshold")


def unique_prompts(prompts: Iterable[str]) -> tuple[str, ...]:
    """Lower-cased, stripped prompts with duplicates removed, first occurrence kept."""
    cleaned = (" ".join(p.lower().split()) for p in prompts)
    return tuple(dict.fromkeys(p for p in cleaned if p))


def as_rgb_array(image: ImageInput, max_pixels: int, bit_window: Window | None = None) -> np.ndarray:
    """Any supported image input as (H, W, 3) uint8."""
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels, bit_window).pixels
    if isinstance(image, Image.Image):
        check_shape(*image.size, "image")
        return to_rgb(image, bit_window)[0]
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputImageError(f"image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise InputImageError(f"image array must be uint8, got {array.dtype}")
    check_shape(array.shape[1], array.shape[0], f"array of shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


class Pipeline:
    """Grounding DINO -> NMS -> size filter -> SAM -> score, as a swappable stage graph."""

    def __init__(self, config: Config, detector: Detector, segmenter: Segmenter, graph: StageGraph | None = None) -> None:
        self.config = config
        self.detector = detector
        self.segmenter = segmenter
        self.graph = graph or self.default_graph()

    @classmethod
    def from_config(cls, config: Config | None = None) -> "Pipeline":
        """Load the models the config names (or the first found in its weights dir)."""
        config = config or Config()
        device = resolve_device(config.device)
        detector_path = chosen_or_found("detector", config.detection.weights, config.weights_dir)
        segmenter_path = chosen_or_found("segmenter", config.masking.weights, config.weights_dir)
        detector = load_detector(config.detection.backend, detector_path, device)
        segmenter = load_segmenter(config.masking.backend, segmenter_path, device)
        return cls(config, detector, segmenter)

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, config: Config | None = None) -> "Pipeline":
        """Load from a weights dir laid out as weights/manifest.toml says."""
        config = (config or Config()).updated({"weights_dir": str(weights_dir)})
        return cls.from_config(config)

    def default_graph(self) -> StageGraph:
        return StageGraph(
            [
                DetectStage(self.detector),
                NmsStage(self.config.filtering.nms_iou),
                SizeFilterStage(),
                MaskStage(self.segmenter),
                ScoreStage(),
            ],
            provided=GRAPH_INPUTS,
        )

    def default_prompts(self) -> tuple[str, ...]:
        return unique_prompts([*self.config.prompts.fixed, *self.config.prompts.extra])

    def segment(
        self,
        image: ImageInput,
        prompts: Sequence[str] | None = None,
        size_threshold: float | None = None,
        calibration: Calibration | None = None,
    ) -> Result:
        """Segment one image.

        Prompts, size threshold and box/text thresholds come from the explicit arguments, else the
        calibration (P_final, S_threshold and the kind's thresholds), else the config.
        """
        pixels = as_rgb_array(image, self.config.max_image_pixels, parse_window(self.config.bit_window))
        detection = self.config.detection
        if calibration is not None:
            prompts = prompts or calibration.p_final
            size_threshold = calibration.size_threshold if size_threshold is None else size_threshold
            box_threshold, text_threshold = calibration.box_threshold, calibration.text_threshold
        else:
            box_threshold, text_threshold = detection.box_threshold, detection.text_threshold
        used_prompts = unique_prompts(prompts) if prompts else self.default_prompts()
        if not used_prompts:
            raise IapasError("no text prompts: give --prompt or a calibration")
        threshold = self.config.filtering.size_threshold if size_threshold is None else float(size_threshold)
        run = self.graph.run(
            {
                "image": pixels,
                "prompts": used_prompts,
                "box_threshold": box_threshold,
                "text_threshold": text_threshold,
                "size_threshold": threshold,
            }
        )
        height, width = pixels.shape[:2]
        boxes: Boxes = run.context["boxes"]
        masks: Masks = run.context.get("masks", Masks.empty(height, width))
        heat = run.context.get("anomaly_map", np.zeros((height, width), np.float32))
        return Result(heat, boxes, masks, used_prompts, run.timings)

    def segment_batch(self, images: Iterable[ImageInput], **options: Any) -> Iterator[tuple[ImageInput, Result | IapasError]]:
        """Stream (input, Result) pairs; an input that fails yields its error and the batch goes on.

        A user's bad input yields its own IapasError; anything unexpected yields an ImageProcessingError
        naming the input (its path, or its position for arrays and PIL images).
        """
        for index, image in enumerate(images):
            try:
                yield image, self.segment(image, **options)
            except IapasError as error:
                yield image, error
            except Exception as error:  # noqa: BLE001 - one input's failure must not end the stream
                name = str(image) if isinstance(image, (str, Path)) else f"input #{index}"
                detail = str(error).splitlines()[0] if str(error) else ""
                yield image, ImageProcessingError(f"cannot segment {name}: {type(error).__name__}{': ' + detail if detail else ''}")

    def calibrate(
        self,
        normal: "ImageSource",
        anomalous: "ImageSource | None" = None,
        category: str | None = None,
        kind: str | None = None,
        ablate: Sequence[str] = (),
    ) -> Calibration:
        """Preprocessing (steps 1-1 to 1-3) on normal images: tags, S_threshold, P_adj and P_final."""
        from .preprocess import Preprocessor

        device = str(resolve_device(self.config.device))
        return Preprocessor(self.config, self.detector, device).calibrate(normal, anomalous, category, kind, ablate)

    def load(self, path: str | Path) -> LoadedImage:
        """Read an image with this pipeline's size limit (notes say what was converted)."""
        return load_image(path, self.config.max_image_pixels, parse_window(self.config.bit_window))
