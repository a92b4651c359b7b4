"""The IAP-AS segmentation pipeline and its Python API."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ...backends import Detector, Segmenter, load_detector, load_segmenter
from ...calibration import Calibration
from ...config import Config, at_least_one, unit_interval
from ...device import models_in_turn, resolve_device
from ...errors import IapasError, ImageProcessingError, InputImageError
from ...stages.graph import GraphRun, StageGraph
from ...images import LoadedImage, Window, check_shape, load_image, parse_window, to_rgb
from ...acceleration.precision import autocast, check_precision
from ...stages import DetectStage, MaskStage, NmsStage, ScoreStage
from ...stages.filtering import SIZE_RULES
from ...types import Boxes, Masks, Result, all_results
from ...vocabulary import unique_prompts
from ...weights.manifest import chosen_or_found

if TYPE_CHECKING:
    from .preprocess import ImageSource

ImageInput = str | Path | np.ndarray | Image.Image
GRAPH_INPUTS = ("image", "prompts", "box_threshold", "text_threshold", "size_threshold", "object_tags")


def _check_pixels(width: int, height: int, what: str, max_pixels: int) -> None:
    """The file loader's size limit, for images handed over in memory (arrays, PIL images)."""
    if width * height > max_pixels:
        raise InputImageError(f"image too large: {what} is {width}x{height} ({width * height / 1e6:.0f} MP), above the "
                              f"limit of {max_pixels / 1e6:.0f} MP; downscale it or raise max_image_pixels")


def as_rgb_array(image: ImageInput, max_pixels: int, bit_window: Window | None = None) -> np.ndarray:
    """Any supported image input as (H, W, 3) uint8."""
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels, bit_window).pixels
    if isinstance(image, Image.Image):
        check_shape(*image.size, "image")
        _check_pixels(*image.size, "image", max_pixels)
        return to_rgb(image, bit_window)[0]
    if not isinstance(image, np.ndarray):
        raise InputImageError(f"an image is a path, a numpy array or a PIL image, not {type(image).__name__}")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputImageError(f"image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise InputImageError(f"image array must be uint8, got {array.dtype}")
    check_shape(array.shape[1], array.shape[0], f"array of shape {array.shape}")
    _check_pixels(array.shape[1], array.shape[0], f"array of shape {array.shape}", max_pixels)
    return np.ascontiguousarray(array[:, :, :3])


def image_list(images: Any, method: str) -> Sequence[ImageInput]:
    """The images a batch method was given, or one IapasError when it was given one image (whose letters or rows
    it would otherwise iterate)."""
    if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        raise IapasError(f"{method} takes a list of images, not one {type(images).__name__}; "
                         f"pass [image], or call segment(image)")
    if not isinstance(images, Iterable):
        raise IapasError(f"{method} takes a list of images, not {type(images).__name__}")
    return images


def prompt_list(prompts: Any) -> Sequence[str] | None:
    """Text prompts as given (None: the defaults), or one IapasError for a lone string or a non-string item."""
    if prompts is None:
        return None
    if isinstance(prompts, str):
        raise IapasError(f"prompts must be a list of strings such as [{prompts!r}], not the string {prompts!r}")
    if not isinstance(prompts, Iterable):
        raise IapasError(f"prompts must be a list of strings, not {type(prompts).__name__}")
    prompts = list(prompts)
    bad = [item for item in prompts if not isinstance(item, str)]
    if bad:
        raise IapasError(f"prompts must be strings, got {bad[0]!r} ({type(bad[0]).__name__})")
    return prompts


def checked_calibration(calibration: Any) -> Calibration | None:
    """A Calibration or None; a path or anything else is one IapasError saying how to load one."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    hint = (f"; load the file first: iapas.calibration.load_calibration({str(calibration)!r})"
            if isinstance(calibration, (str, Path)) else "")
    raise IapasError(f"calibration must be a Calibration, not {type(calibration).__name__}{hint}")


class Pipeline:
    """Grounding DINO -> NMS -> size filter -> SAM -> score, as a swappable stage graph.

    One instance may be shared between threads. In parallel: reading and converting each image, checking
    the arguments and building each Result. In turn: the graph run and calibration, which use the models
    (`device.models_in_turn`: every Pipeline sharing a detector or segmenter waits for the others, since a
    backend shadows a module's forward during a call, and one forward already uses every core).
    """

    def __init__(self, config: Config, detector: Detector, segmenter: Segmenter, graph: StageGraph | None = None) -> None:
        self.config = config
        self.detector = detector
        self.segmenter = segmenter
        self.graph = graph or self.default_graph()
        check_precision(config.precision, self._device())  # fp16 on a CPU is refused here, before any image

    @classmethod
    def from_config(cls, config: Config | None = None) -> "Pipeline":
        """Load the models the config names (or the first found in its weights dir)."""
        from ...acceleration.quantisation import check_int8_precision, quantise_backend
        from ...acceleration.runtimes import RUNTIMES, use_runtime  # exported encoders in place of torch's (iapas/runtimes)
        from ...acceleration.threads import configure_threads

        config = config or Config()
        RUNTIMES.get(config.detection.runtime), RUNTIMES.get(config.masking.runtime)  # a misspelt runtime fails before loading
        if config.threads > 0:  # auto (0) is the CLI's to apply: a library import changes no process-wide setting
            configure_threads(config.threads)
        device = resolve_device(config.device)
        if config.detection.int8 or config.masking.int8:
            check_int8_precision(config.precision)  # before any model loads (bf16 activations would fail every image)
        from ...backends.base import weights_family

        # an explicit backend (a profile's) only finds weights of its own family in the weights dir
        detector_path = chosen_or_found("detector", config.detection.weights, config.weights_dir,
                                        weights_family(config.detection.backend))
        detector = load_detector(config.detection.backend, detector_path, device, config.detection.input_size)
        if hasattr(detector, "refinement_eps"):  # Grounding DINO's box-refinement clamp is the recipe's, whatever the file
            detector.refinement_eps = config.detection.refinement_eps
        if config.masking.backend == getattr(detector, "also_segments", None):  # SAM 3: one model, one image encoding
            segmenter, segmenter_path = detector, detector_path
        else:
            segmenter_path = chosen_or_found("segmenter", config.masking.weights, config.weights_dir,
                                             weights_family(config.masking.backend))
            segmenter = load_segmenter(config.masking.backend, segmenter_path, device)
        use_runtime(detector, config.detection.runtime, detector_path, device)
        use_runtime(segmenter, config.masking.runtime, segmenter_path, device)
        if config.detection.int8:
            quantise_backend(detector, "detection", device)
        if config.masking.int8:
            quantise_backend(segmenter, "masking", device)
        return cls(config, detector, segmenter)

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, config: Config | None = None, recipe: str | None = None) -> "Pipeline":
        """Load from a weights dir laid out as the weights manifest says, with a recipe's rules when named."""
        from ...config import build_config

        if recipe is not None:
            if config is not None and config.recipe != recipe:
                raise IapasError(f"config was built from recipe {config.recipe!r}, not {recipe!r}")
            config = config or build_config(recipe)
        config = (config or Config()).updated({"weights_dir": str(weights_dir)})
        return cls.from_config(config)

    def default_graph(self) -> StageGraph:
        """The recipe's graph: detection -> NMS -> size filter (by the recipe's rule) -> masking -> scoring."""
        from ...backends.grounding_dino import PHRASE_RULES
        from ...stages.detection import CAPTION_FORMATS, clamps_at_detection
        from ...stages.scoring import NORMALISATIONS

        config = self.config
        # a misspelt rule is a one-line error now, not at the first image
        CAPTION_FORMATS.get(config.detection.caption_format)
        PHRASE_RULES.get(config.detection.phrase_rule)
        NORMALISATIONS.get(config.scoring.normalise)
        return StageGraph(
            [
                DetectStage(self.detector, config.detection.caption_format, config.detection.phrase_rule,
                            config.detection.max_boxes, clamps_at_detection(config.detection.box_clamp)),
                # NMS before the size filter: the official order (utils/function.py process_box_output, then process_size_output)
                NmsStage(config.filtering.nms_iou),
                SIZE_RULES.get(config.filtering.size_rule)(self.detector, config),
                MaskStage(self.segmenter),
                ScoreStage(config.scoring.normalise),
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
        context = self._context(image, prompts, size_threshold, calibration)
        with self._models_in_turn(), self._precision():
            run = self.graph.run(context)
        return self._result(context, run)

    def segment_many(
        self,
        images: Sequence[ImageInput],
        batch_size: int | None = None,
        prompts: Sequence[str] | None = None,
        size_threshold: float | None = None,
        calibration: Calibration | None = None,
    ) -> list[Result]:
        """`segment` on every image, `batch_size` (default: the config's) at a time; raises the first failure.

        Detection and masking run on each batch together (one vision backbone pass per group of
        equal-size images, one SAM encoder forward); the other stages run per image. The results
        are those `segment` gives one by one (tests/test_batching.py states the tolerance).
        """
        return all_results(self.segment_outcomes(images, batch_size, prompts, size_threshold, calibration))

    def segment_outcomes(
        self,
        images: Sequence[ImageInput],
        batch_size: int | None = None,
        prompts: Sequence[str] | None = None,
        size_threshold: float | None = None,
        calibration: Calibration | None = None,
    ) -> list[Result | Exception]:
        """`segment_many` that hands back each image's exception in its place instead of raising it."""
        images = list(image_list(images, "segment_many"))
        size = at_least_one(self.config.batch_size if batch_size is None else batch_size, "batch_size")
        outcomes: list[Result | Exception] = []
        for start in range(0, len(images), size):
            contexts: list[dict[str, Any] | Exception] = []
            for image in images[start : start + size]:
                try:
                    contexts.append(self._context(image, prompts, size_threshold, calibration))
                except Exception as error:  # noqa: BLE001 - this image's, handed back in its place
                    contexts.append(error)
            ready = [context for context in contexts if not isinstance(context, Exception)]
            with self._models_in_turn(), self._precision():
                runs = iter(self.graph.run_batch(ready))
            for context in contexts:
                if isinstance(context, Exception):
                    outcomes.append(context)
                    continue
                run = next(runs)
                outcomes.append(run if isinstance(run, Exception) else self._result(context, run))
        return outcomes

    def _device(self) -> torch.device:
        """Where the models run: the detector's device (the config's when the detector does not say)."""
        return torch.device(getattr(self.detector, "device", None) or resolve_device(self.config.device))

    def _models_in_turn(self) -> ContextManager:
        """No other thread inside this pipeline's models meanwhile (see the class docstring)."""
        return models_in_turn(self.detector, self.segmenter)

    def _precision(self) -> ContextManager:
        """The models' autocast for the config's precision (nothing for the default fp32)."""
        return autocast(self.config.precision, self._device())

    def _context(
        self, image: ImageInput, prompts: Sequence[str] | None, size_threshold: float | None,
        calibration: Calibration | None,
    ) -> dict[str, Any]:
        """The graph's inputs for one image: its pixels, the prompts and the thresholds in force."""
        prompts, calibration = prompt_list(prompts), checked_calibration(calibration)
        pixels = as_rgb_array(image, self.config.max_image_pixels, parse_window(self.config.bit_window))
        detection = self.config.detection
        if calibration is not None:
            prompts = prompts or calibration.p_final
            size_threshold = calibration.size_threshold if size_threshold is None else size_threshold
            box_threshold, text_threshold = calibration.box_threshold, calibration.text_threshold
            object_tags = calibration.tags
        else:
            box_threshold, text_threshold = detection.box_threshold, detection.text_threshold
            object_tags = tuple(self.config.calibration.tags)
        used_prompts = unique_prompts(prompts) if prompts else self.default_prompts()
        if not used_prompts:
            raise IapasError("no text prompts: give --prompt or a calibration")
        threshold = unit_interval(self.config.filtering.size_threshold if size_threshold is None else size_threshold,
                                  "size_threshold")  # the Python API gets the CLI's range check
        return {
            "image": pixels,
            "prompts": used_prompts,
            "box_threshold": box_threshold,
            "text_threshold": text_threshold,
            "size_threshold": threshold,
            "object_tags": tuple(object_tags),
        }

    @staticmethod
    def _result(context: dict[str, Any], run: GraphRun) -> Result:
        """The Result of one graph run: boxes, masks and map (empty when an ablation removed their stage)."""
        height, width = context["image"].shape[:2]
        boxes: Boxes = run.context["boxes"]
        masks: Masks = run.context.get("masks", Masks.empty(height, width))
        heat = run.context.get("anomaly_map", np.zeros((height, width), np.float32))
        filtered = "size_filter" in run.timings  # an ablation may have removed the size filter
        return Result(
            heat, boxes, masks, context["prompts"], run.timings, object_tags=context["object_tags"],
            object_box=run.context.get("object_box"), object_size=run.context.get("object_size"),
            size_limit=run.context.get("size_limit", context["size_threshold"]) if filtered else None,
        )

    def segment_batch(self, images: Iterable[ImageInput], **options: Any) -> Iterator[tuple[ImageInput, Result | IapasError]]:
        """Stream (input, Result) pairs; an input that fails yields its error and the batch goes on.

        A user's bad input yields its own IapasError; anything unexpected yields an ImageProcessingError
        naming the input (its path, or its position for arrays and PIL images).
        """
        images = image_list(images, "segment_batch")  # checked now, not at the first next()
        prompt_list(options.get("prompts"))
        checked_calibration(options.get("calibration"))
        return self._stream(images, options)

    def _stream(self, images: Iterable[ImageInput], options: dict[str, Any]) -> Iterator[tuple[ImageInput, Result | IapasError]]:
        for index, image in enumerate(images):
            try:
                yield image, self.segment(image, **options)
            except IapasError as error:
                yield image, error
            except Exception as error:  # noqa: BLE001 - one input's failure must not end the stream
                from ...runs.batch import failure_message

                name = Path(image) if isinstance(image, (str, Path)) else f"input #{index}"
                yield image, ImageProcessingError(failure_message(name, error))

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

        for source in (normal, anomalous):
            if source is not None and not isinstance(source, (str, Path)) and not (
                    isinstance(source, Sequence) and all(isinstance(item, (str, Path)) for item in source)):
                raise IapasError("calibrate takes a folder of normal images or a list of image files (paths), "
                                 f"not {type(source).__name__}; save arrays as image files first")
        device = str(resolve_device(self.config.device))
        with models_in_turn(self.detector):
            return Preprocessor(self.config, self.detector, device).calibrate(normal, anomalous, category, kind, ablate)

    def load(self, path: str | Path) -> LoadedImage:
        """Read an image with this pipeline's size limit (notes say what was converted)."""
        return load_image(path, self.config.max_image_pixels, parse_window(self.config.bit_window))
