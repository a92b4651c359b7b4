"""Where a few-shot method's K normal reference images come from (`--shots K`, `--reference-images DIR`).

Shared by WinCLIP+ and AnomalyDINO: a folder the user names, else (in `iapas eval`) the category's normal
training images; each method then picks its K from that pool by its own rule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import IapasError


def reference_pool(reference_dir: Path | None, normal_images: Sequence[Path], shots: int, category: str) -> tuple[list[Path], str]:
    """The images the K shots are drawn from and how to name that pool in an error (one-line IapasError when there is none)."""
    from ..images import find_images

    if reference_dir is not None:
        return find_images(reference_dir), str(reference_dir)
    if normal_images:
        return list(normal_images), f"the normal images of {category}"
    raise IapasError(f"--shots {shots} needs --reference-images DIR (a folder of normal images)")
