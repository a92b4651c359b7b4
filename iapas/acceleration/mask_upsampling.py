"""Exact thresholded bilinear up-sampling of low-resolution mask logits, computed only where a mask can be positive.

SAM returns 256x256 logits per box; its `postprocess_masks` (facebookresearch/segment-anything
segment_anything/modeling/sam.py, and transformers' SamImageProcessor.post_process_masks the same way)
up-samples every one to the padded 1024x1024 input, crops the resized image, up-samples again to the
original H x W and keeps logits > 0. That is two full-resolution interpolations per box.

Bilinear interpolation (align_corners=False) gives each output pixel a convex combination of at most four
source values, so an output can be > 0 only where one of the values it reads is > 0 (float rounding keeps
the sign of a sum of non-positive products). Starting from the bounding box of each mask's positive
logits, `upsample_positive` carries that box through every resize (the output rows whose two source rows
touch it, and the same for columns), then computes the resizes only on the rows and columns the final
region reads, which reach at most one source row or column past the positive region at each step. Everything
outside the region is False.

The interpolation follows PyTorch's `upsample_bilinear2d` on the CPU (aten/src/ATen/native/UpSample.h
area_pixel_compute_scale, area_pixel_compute_source_index, guard_index_and_lambda; UpSampleKernel.cpp
computes the width sum inside the height sum): scale = float32(in / out), src = max(scale * (dst + 0.5) - 0.5, 0),
i0 = floor(src) (at most in - 1), i1 = min(i0 + 1, in - 1), w1 = clamp(src - i0, 0, 1), w0 = 1 - w1, all in
float32, and an output of the input's size is a copy. Tolerance: a pixel may differ from SAM's own
post-processing only where the full-resolution logit is within float rounding of 0 (|logit| < 1e-5);
tests/test_mask_upsampling.py checks this on random logits and image sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..types import Masks

SAM_ENCODER_SIZE = 1024  # SAM's padded square input (ImageEncoderViT img_size)
# A region at least this share of the output is resized whole by F.interpolate (the reference itself):
# per output pixel the region path's separate gather, multiply and add passes cost about 3 to 4 times
# PyTorch's fused kernel (measured at 4000x3000 on one thread), so it wins only on smaller regions.
WHOLE_IMAGE_SHARE = 0.25


@dataclass(frozen=True)
class ResizeStep:
    """One bilinear resize (align_corners=False) to `size` (height, width), then a top-left crop to `keep`."""

    size: tuple[int, int]
    keep: tuple[int, int] | None = None

    @property
    def kept(self) -> tuple[int, int]:
        return self.keep if self.keep is not None else self.size


def sam_steps(input_size: tuple[int, int], original_size: tuple[int, int], encoder_size: int = SAM_ENCODER_SIZE) -> list[ResizeStep]:
    """SAM's post-processing: to the padded encoder square, crop to the resized image, then to the original size."""
    return [ResizeStep((encoder_size, encoder_size), tuple(input_size)), ResizeStep(tuple(original_size))]


@dataclass(frozen=True)
class AxisPlan:
    """Source indices and weights of one resize along one axis, as PyTorch computes them (float32)."""

    index0: torch.Tensor  # (out,) int64
    index1: torch.Tensor  # (out,) int64
    weight0: torch.Tensor  # (out,) float32
    weight1: torch.Tensor  # (out,) float32
    identity: bool  # out == in: PyTorch copies

    @classmethod
    def build(cls, size_in: int, size_out: int, kept: int, device: torch.device) -> "AxisPlan":
        """The first `kept` of `size_out` outputs resized from `size_in` inputs."""
        dst = torch.arange(kept, device=device)
        if size_in == size_out:
            return cls(dst, dst, torch.ones(kept, device=device), torch.zeros(kept, device=device), True)
        scale = torch.tensor(size_in, dtype=torch.float32) / torch.tensor(size_out, dtype=torch.float32)
        src = (dst.to(torch.float32) + 0.5) * scale.to(device) - 0.5
        src = torch.clamp(src, min=0.0)
        index0 = torch.clamp(torch.floor(src).to(torch.int64), max=size_in - 1)
        weight1 = torch.clamp(src - index0.to(torch.float32), 0.0, 1.0)
        index1 = torch.clamp(index0 + 1, max=size_in - 1)
        return cls(index0, index1, 1.0 - weight1, weight1, False)

    def touching(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per mask, the half-open output range [start, stop) whose two sources meet the inclusive range [low, high]."""
        start = torch.searchsorted(self.index1, low.contiguous(), right=False)  # first output reading a row >= low
        stop = torch.searchsorted(self.index0, high.contiguous(), right=True)  # past the last output reading a row <= high
        return start, torch.maximum(stop, start)


def _resize_axis(values: torch.Tensor, plan: AxisPlan, start: int, stop: int, offset: int, axis: int) -> torch.Tensor:
    """Outputs [start, stop) of one axis from `values`, whose first entry along `axis` is source index `offset`."""
    if plan.identity:
        return values.narrow(axis, start - offset, stop - start)
    first = values.index_select(axis, plan.index0[start:stop] - offset)
    second = values.index_select(axis, plan.index1[start:stop] - offset)
    shape = [1, 1]
    shape[axis] = stop - start
    weight0, weight1 = plan.weight0[start:stop].view(shape), plan.weight1[start:stop].view(shape)
    return first * weight0 + second * weight1  # two rounded products and a rounded sum, as PyTorch's kernel


def positive_boxes(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) any-positive flags and (N, 2) inclusive row and column ranges of each mask's logits > 0."""
    positive = logits > 0
    rows, cols = positive.any(dim=2), positive.any(dim=1)
    present = rows.any(dim=1)
    height, width = rows.shape[1], cols.shape[1]
    ramp_h, ramp_w = torch.arange(height, device=logits.device), torch.arange(width, device=logits.device)
    row_range = torch.stack([torch.where(rows, ramp_h, height).amin(1), torch.where(rows, ramp_h, -1).amax(1)], 1)
    col_range = torch.stack([torch.where(cols, ramp_w, width).amin(1), torch.where(cols, ramp_w, -1).amax(1)], 1)
    return present, row_range, col_range


def upsample_positive(logits: torch.Tensor, steps: Sequence[ResizeStep]) -> Masks:
    """(N, h, w) float logits through the resize steps, thresholded at > 0, as `Masks` with each mask's region.

    Equal to thresholding the F.interpolate chain at full resolution, within the module's stated tolerance.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be (N, h, w), got shape {tuple(logits.shape)}")
    logits = logits.to(torch.float32)
    count = logits.shape[0]
    height, width = steps[-1].kept if steps else logits.shape[1:]
    data = np.zeros((count, height, width), bool)  # untouched pages stay unallocated
    regions = np.zeros((count, 4), np.int64)
    if count == 0:
        return Masks(data, regions)
    # one plan per step and axis, shared by every mask
    plans: list[tuple[AxisPlan, AxisPlan]] = []
    size_h, size_w = logits.shape[1:]
    for step in steps:
        plans.append((AxisPlan.build(size_h, step.size[0], step.kept[0], logits.device),
                      AxisPlan.build(size_w, step.size[1], step.kept[1], logits.device)))
        size_h, size_w = step.kept
    present, row_range, col_range = positive_boxes(logits)
    # forward: the region each step's output can be positive in, all masks at once
    row_lo, row_hi = row_range[:, 0], row_range[:, 1]
    col_lo, col_hi = col_range[:, 0], col_range[:, 1]
    forward = []
    for plan_h, plan_w in plans:
        row_start, row_stop = plan_h.touching(row_lo, row_hi)
        col_start, col_stop = plan_w.touching(col_lo, col_hi)
        forward.append((row_start, row_stop, col_start, col_stop))
        row_lo, row_hi, col_lo, col_hi = row_start, row_stop - 1, col_start, col_stop - 1
    final = torch.stack(forward[-1], 1).cpu().numpy() if forward else None
    present_host = present.cpu().numpy()
    whole = []  # masks whose region is most of the image: resized together by F.interpolate
    for index in range(count):
        if not present_host[index]:
            continue
        if final is None:
            box = row_range[index].tolist() + col_range[index].tolist()
            region = (box[0], box[1] + 1, box[2], box[3] + 1)
        else:
            region = tuple(int(v) for v in final[index])
        top, bottom, left, right = region
        if bottom <= top or right <= left:
            continue
        regions[index] = (left, top, right, bottom)
        if (bottom - top) * (right - left) >= WHOLE_IMAGE_SHARE * height * width:
            whole.append(index)
            continue
        values = _region_values(logits[index], plans, region)
        data[index, top:bottom, left:right] = (values > 0).cpu().numpy()
    if whole:
        # outside its region a mask's values are <= 0 (the module docstring), so whole masks equal region-only ones
        data[whole] = (_whole_values(logits[whole], steps) > 0).cpu().numpy()
    return Masks(data, regions)


def _whole_values(source: torch.Tensor, steps: Sequence[ResizeStep]) -> torch.Tensor:
    """(M, H, W) final values everywhere for (M, h, w) logits: the F.interpolate chain SAM's post-processing runs."""
    values = source[:, None]
    for step in steps:
        values = F.interpolate(values, step.size, mode="bilinear", align_corners=False)
        values = values[..., : step.kept[0], : step.kept[1]]
    return values[:, 0]


def _region_values(source: torch.Tensor, plans: list[tuple[AxisPlan, AxisPlan]], region: tuple[int, ...]) -> torch.Tensor:
    """The final step's values on `region` (top, bottom, left, right), computing each step only on the span read."""
    # backward: the half-open span of each level that the next level's span reads
    spans = [region]
    for plan_h, plan_w in reversed(plans):
        top, bottom, left, right = spans[0]
        spans.insert(0, (int(plan_h.index0[top]), int(plan_h.index1[bottom - 1]) + 1,
                         int(plan_w.index0[left]), int(plan_w.index1[right - 1]) + 1))
    top, bottom, left, right = spans[0]
    values = source[top:bottom, left:right]
    for (plan_h, plan_w), (top_in, _, left_in, _), (top, bottom, left, right) in zip(plans, spans[:-1], spans[1:]):
        values = _resize_axis(values, plan_w, left, right, left_in, axis=1)  # width inside, as PyTorch nests it
        values = _resize_axis(values, plan_h, top, bottom, top_in, axis=0)
    return values
