"""Mixed precision for the models: an autocast context per `precision` setting (fp32 | bf16 | fp16).

fp32 is the default everywhere and runs no autocast, so its numbers are the reference ones. bf16 and
fp16 wrap the detector and the segmenter in `torch.autocast`: matmuls and convolutions run in the
lower precision, reductions and the post-processing stay in float32 (torch's autocast op lists).
On the CPU only bf16 is offered, and only when asked for (CPU autocast has no fast fp16 kernels);
the maps stay within the tolerance tests/test_batching.py states of the fp32 ones.

`auto` (the fast profiles' setting) is bf16 where the device computes it natively, fp32 elsewhere: a CUDA
GPU that supports bf16, or a CPU with AMX-BF16 or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4),
where oneDNN runs bf16 matrix products at about twice the fp32 rate (benchmarks/README.md: SAM ViT-B's
encoder 8.4 s -> 4.3 s on a 2-core Xeon). On a CPU without them bf16 is emulated and slower than fp32.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ..config import PRECISIONS
from ..errors import ConfigError

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # auto resolves first
CPU_PRECISIONS = ("fp32", "bf16", "auto")  # fp16 autocast on the CPU is slow and not what anyone wants there


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matrix products in hardware."""
    if device.type == "cuda":
        # Ampere (compute capability 8.0) and later have bf16 tensor cores; is_bf16_supported() also counts emulation
        return bool(torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0))
    if device.type != "cpu":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", lambda: {})()  # absent on older torch: assume none
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision that runs: `auto` becomes bf16 on a device with native bf16, else fp32; others stay."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse (one line) a precision the device cannot run."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (choose one of {', '.join(PRECISIONS)})")
    if device.type != "cuda" and precision not in CPU_PRECISIONS:
        raise ConfigError(f"--precision {precision} needs a CUDA GPU; on {device.type} use fp32 (default) or bf16")


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context that runs the models' forwards at `precision` on `device` (nothing for fp32)."""
    check_precision(precision, device)
    dtype = AUTOCAST_DTYPES[resolve_precision(precision, device)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def full_precision(device: torch.device) -> ContextManager:
    """Autocast switched off: post-processing that sits inside a forward (up-sampling, softmax of maps) stays float32."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
