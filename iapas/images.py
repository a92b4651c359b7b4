"""Reading images safely: every bad input becomes one InputImageError line."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image ready for the models.

    pixels: (H, W, 3) uint8; notes: what was converted on the way (grey to RGB, alpha dropped, ...).
    """

    path: Path
    pixels: np.ndarray
    notes: tuple[str, ...] = ()


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Stretch a high-bit-depth or float array to 0..255 by its own min and max."""
    array = array.astype(np.float64)
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def to_rgb(image: Image.Image) -> tuple[np.ndarray, tuple[str, ...]]:
    """Convert any PIL mode to (H, W, 3) uint8, saying what was changed."""
    notes: list[str] = []
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        notes.append(f"{'16-bit' if mode.startswith('I;16') else mode + '-mode'} grey image stretched to 8-bit by its min-max range")
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2), tuple(notes)
    if mode in ("L", "1", "LA"):
        notes.append("greyscale image replicated to RGB")
    if mode in ("RGBA", "LA", "PA"):
        notes.append("alpha channel dropped")
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return rgb, tuple(notes)


def load_image(path: str | Path, max_pixels: int = 80_000_000) -> LoadedImage:
    """Read an image file as RGB uint8, or raise InputImageError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"image not found: {path}")
    if path.is_dir():
        raise InputImageError(f"expected an image file, got a folder: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InputImageError(
                        f"image too large: {path} is {width}x{height} ({width * height / 1e6:.0f} MP), "
                        f"above the limit of {max_pixels / 1e6:.0f} MP; downscale it or raise max_image_pixels"
                    )
                image.load()
                pixels, notes = to_rgb(image)
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputImageError(f"image too large to decode safely: {path}") from None
    except UnidentifiedImageError:
        raise InputImageError(f"not an image file (or an unsupported format): {path}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputImageError(f"cannot read image {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if pixels.shape[0] < 2 or pixels.shape[1] < 2:
        raise InputImageError(f"image too small: {path} is {pixels.shape[1]}x{pixels.shape[0]}")
    return LoadedImage(path, pixels, notes)


def find_images(root: str | Path) -> list[Path]:
    """Every image file under a folder, sorted, ignoring hidden files and folders."""
    root = Path(root)
    if not root.is_dir():
        raise InputImageError(f"folder not found: {root}")
    found = [
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found)


def collect_inputs(items: list[str | Path]) -> list[tuple[Path, Path | None]]:
    """Expand files and folders given on a command line into (image, folder it came from) pairs."""
    collected: list[tuple[Path, Path | None]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            images = find_images(path)
            if not images:
                raise InputImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in folder: {path}")
            collected.extend((image, path) for image in images)
        elif path.exists():
            collected.append((path, None))
        else:
            raise InputImageError(f"image not found: {path}")
    return collected
