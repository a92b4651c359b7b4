"""Where a few-shot method's K normal reference images come from (`--shots K`, `--reference-images DIR`).

Shared by WinCLIP+ and AnomalyDINO: a folder the user names, else (in `iapas eval`) the category's normal
training images, at least K of them; each method then picks its K from that pool by its own rule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import IapasError


def reference_pool(reference_dir: Path | None, normal_images: Sequence[Path], shots: int, category: str) -> list[Path]:
    """The images the K shots are drawn from (one-line IapasError when there is none, or fewer than `shots`)."""
    from ..images import find_images

    if reference_dir is not None:
        pool, where = find_images(reference_dir), str(reference_dir)
    elif normal_images:
        pool, where = list(normal_images), f"the normal images of {category}"
    else:
        raise IapasError(f"--shots {shots} needs --reference-images DIR (a folder of normal images)")
    if len(pool) < shots:
        raise IapasError(f"--shots {shots} needs {shots} normal reference images; {where} has {len(pool)}")
    return pool
