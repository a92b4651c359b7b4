"""Several images through one network forward: what every CLIP comparison method shares for `--batch-size`.

A batched method splits its work in two: `encode_batch` runs the images of a batch through the (prompted)
CLIP image encoder in one forward on a stacked tensor (every image resized to the method's input size
first, so images of any sizes share a batch), and `finish` does one image's own scoring from its share
of that forward, exactly as one image alone would. `BatchedMethod` builds `segment` and `segment_outcomes`
from the two, the way the IAP-AS pipeline's `segment_outcomes` hands back each image's Result or exception
in its place; `MethodSegment` is the callable the engines and `iapas bench` take (`__call__` and `many`).

`BatchedMethod` is also where `--precision` reaches every CLIP method: `encode_batch` (the CLIP forwards)
runs under the backbone's autocast, and what it hands on is cast back to float32, so `finish` (scoring,
smoothing, up-sampling, normalisation) always works in float32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, ContextManager, Sequence

import numpy as np
import torch

from ..config import at_least_one
from ..types import Result, all_results


def rgb_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of an array input, or the IAP-AS pipeline's one-line InputImageError (grey and RGBA converted)."""
    from ..config import Config
    from .iapas.pipeline import as_rgb_array  # the pipeline's rule for array inputs, so every method takes the same arrays

    return as_rgb_array(image, Config.max_image_pixels)


class BatchedMethod:
    """`segment` and `segment_outcomes` from a method's `encode_batch` (one forward) and `finish` (one image).

    `encode_batch(images)` returns one item per image and the batch's stage timings in seconds; each image's
    Result gets an equal share of those timings (as `iapas bench` shares a batch's time) beside its own.
    """

    def encode_batch(self, images: list[np.ndarray]) -> tuple[list[Any], dict[str, float]]:
        raise NotImplementedError

    def forward_precision(self) -> ContextManager:
        """The autocast `encode_batch` runs under: the method's CLIP backbone's (`--precision`), else none."""
        backbone = getattr(self, "backbone", None)
        return backbone.autocast() if hasattr(backbone, "autocast") else contextlib.nullcontext()

    def finish(self, image: np.ndarray, encoded: Any, timings: dict[str, float]) -> Result:
        raise NotImplementedError

    def segment(self, image: np.ndarray) -> Result:
        """One image: a batch of one (the same code path as a batch, so batched maps can be compared with these)."""
        return all_results(self.segment_outcomes([image]))[0]

    def segment_outcomes(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[Result | Exception]:
        """Every image's Result, `batch_size` (default: all) per forward; an image that fails gets its exception in its place.

        A bad input (wrong dtype, too small or thin) fails alone, before the forward. When the batched forward
        itself raises, each image of the batch is run alone, so the error is the image's that caused it.
        """
        size = at_least_one(len(images) if batch_size is None else batch_size, "batch_size") if images else 1
        outcomes: list[Result | Exception] = []
        for start in range(0, len(images), size):
            outcomes.extend(self._batch(list(images[start:start + size])))
        return outcomes

    def _batch(self, images: list[np.ndarray]) -> list[Result | Exception]:
        checked: list[np.ndarray | Exception] = []
        for image in images:
            try:
                checked.append(rgb_pixels(image))
            except Exception as error:  # noqa: BLE001 - this image's, handed back in its place
                checked.append(error)
        ready = [image for image in checked if not isinstance(image, Exception)]
        try:
            with self.forward_precision():
                encoded, timings = self.encode_batch(ready) if ready else ([], {})
            encoded = [in_float32(item) for item in encoded]
        except Exception as error:  # noqa: BLE001 - alone, each image's error is its own
            if len(ready) == 1:
                encoded = [error]
                timings = {}
            else:
                return [image if isinstance(image, Exception) else self._batch([image])[0] for image in checked]
        shares = {name: seconds / max(1, len(ready)) for name, seconds in timings.items()}
        items = iter(encoded)
        outcomes: list[Result | Exception] = []
        for image in checked:
            if isinstance(image, Exception):
                outcomes.append(image)
                continue
            item = next(items)
            if isinstance(item, Exception):
                outcomes.append(item)
                continue
            try:
                outcomes.append(self.finish(image, item, dict(shares)))
            except Exception as error:  # noqa: BLE001 - this image's, handed back in its place
                outcomes.append(error)
        return outcomes


def in_float32(item: Any) -> Any:
    """`item` with every floating-point tensor in it (tuples, lists, dataclasses) as float32; anything else unchanged."""
    if isinstance(item, torch.Tensor):
        return item.float() if item.is_floating_point() else item
    if isinstance(item, tuple) and hasattr(item, "_fields"):  # a NamedTuple
        return type(item)(*(in_float32(part) for part in item))
    if isinstance(item, (tuple, list)):
        return type(item)(in_float32(part) for part in item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.replace(item, **{f.name: in_float32(getattr(item, f.name)) for f in dataclasses.fields(item) if f.init})
    return item


def timed(timings: dict[str, float], name: str, since: float) -> float:
    """Add the seconds since `since` to `timings[name]`; returns now (the next step's start)."""
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - since
    return now


class MethodSegment:
    """A method as the engines' Segment: one image by `__call__`, a batch by `many` (each image's Result or exception)."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def __call__(self, pixels: np.ndarray) -> Result:
        return self.method.segment(pixels)

    def many(self, images: list[np.ndarray]) -> list[Result | Exception]:
        outcomes = getattr(self.method, "segment_outcomes", None)
        if outcomes is None:  # a method without a batched path: one by one, each failure in its place
            results: list[Result | Exception] = []
            for image in images:
                try:
                    results.append(self.method.segment(image))
                except Exception as error:  # noqa: BLE001 - this image's
                    results.append(error)
            return results
        return outcomes(images, len(images))
