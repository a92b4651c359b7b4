"""Choosing the torch device: GPU when there is one, CPU otherwise."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" into a usable torch.device."""
    import torch  # here, so DEVICE_CHOICES reaches the CLI's parser without torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r} (choose one of {', '.join(DEVICE_CHOICES)})")
