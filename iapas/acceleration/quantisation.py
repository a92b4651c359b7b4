"""Optional int8 dynamic quantisation of a model's linear layers, for faster CPU inference (`--int8`).

torch.ao.quantization.quantize_dynamic swaps every nn.Linear for one with int8 weights whose inputs are
quantised per batch at run time; convolutions, norms and everything else stay float32. It runs on the CPU
only. The maps move a little from float32's (tests/test_int8_threads.py states and checks the tolerance),
so it is off by default.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import ConfigError


def quantise_linear_layers(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with its nn.Linear layers dynamically quantised to int8, in place."""
    with warnings.catch_warnings():
        # torch 2.10+ marks quantised tensor creation deprecated (in favour of torchao) but still runs it
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def check_int8_precision(precision: str) -> None:
    """Refuse (one line) int8 beside a half-precision autocast: dynamic int8 layers take float32 inputs, autocast hands them bf16/fp16."""
    if precision != "fp32":
        raise ConfigError(f"--int8 and --precision {precision} exclude each other (int8 layers take float32 inputs): drop one")


def int8_modules(backend: Any, what: str) -> list[torch.nn.Module]:
    """The modules of a loaded backend worth quantising: its own `int8_modules()`, else its `model`."""
    if hasattr(backend, "int8_modules"):
        return list(backend.int8_modules())
    model = getattr(backend, "model", None)
    if isinstance(model, torch.nn.Module):
        return [model]
    raise ConfigError(f"the {what} backend {type(backend).__name__} has no int8 path: drop --int8 / {what}.int8")


def quantise_backend(backend: Any, what: str, device: torch.device) -> None:
    """Quantise a loaded detector's or segmenter's linear layers to int8 (CPU only)."""
    if torch.device(device).type != "cpu":
        raise ConfigError(f"{what}.int8 runs on the CPU only, but the device is {device}: add --device cpu or drop --int8")
    for module in int8_modules(backend, what):
        quantise_linear_layers(module)
