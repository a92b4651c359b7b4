"""Reading images safely: every bad input becomes one InputImageError line, every conversion one note.

High-bit-depth rule (one rule for every image, so one raw value always gives the same grey level):
integer images (16-bit grey, 16-bit RGB, 32-bit integer) map the window [0, 65535] linearly onto
0..255, i.e. value / 257; float images map [0, 1]. A fixed window (config `bit_window`, `--bit-window
LOW,HIGH`) replaces either; values outside the window are clipped, with a note saying how many.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import DEFAULT_MAX_IMAGE_PIXELS
from .errors import ConfigError, InputImageError
from .files import FINGERPRINT_FILE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INTEGER_WINDOW = (0.0, 65535.0)  # the full 16-bit range: value / 257
FLOAT_WINDOW = (0.0, 1.0)
MAX_ASPECT_RATIO = 100  # the detector scales the long side to ~1333 px (SAM: 1024); beyond 100:1 the short side vanishes
EXIF_ORIENTATION = 0x0112
HIGH_BIT_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

Window = tuple[float, float]
Report = Callable[[str], None]


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image ready for the models.

    pixels: (H, W, 3) uint8; notes: what was converted on the way (grey to RGB, alpha dropped, ...).
    """

    path: Path
    pixels: np.ndarray
    notes: tuple[str, ...] = ()


def note_to_stderr(message: str) -> None:
    """The default way a note reaches the user: one line on stderr."""
    print(message, file=sys.stderr)


def parse_window(text: str | Sequence[float] | None) -> Window | None:
    """A (low, high) window from "LOW,HIGH" or a two-item list; None or empty means the default rule."""
    if text is None or (not isinstance(text, str) and len(text) == 0) or text == "":
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        low, high = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"bit window must be two numbers LOW,HIGH, got {text!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ConfigError(f"bit window must have LOW < HIGH (finite numbers), got {low:g},{high:g}")
    return low, high


def scale_to_uint8(array: np.ndarray, window: Window) -> tuple[np.ndarray, float]:
    """Map `window` linearly onto 0..255 (clipping outside it); also the fraction of pixels clipped."""
    low, high = window
    values = array.astype(np.float64)
    clipped = float(np.mean((values < low) | (values > high))) if values.size else 0.0
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.round(scaled).astype(np.uint8), clipped


def _high_bit_to_uint8(array: np.ndarray, kind: str, window: Window | None, path: object) -> tuple[np.ndarray, list[str]]:
    """The one high-bit-depth rule (module docstring), with the notes that say what it did."""
    is_float = array.dtype.kind == "f"
    if is_float and not np.isfinite(array).all():
        raise InputImageError(f"image contains NaN or infinite values: {path}")
    chosen = window or (FLOAT_WINDOW if is_float else INTEGER_WINDOW)
    pixels, clipped = scale_to_uint8(array, chosen)
    rule = "value/257 (the full 16-bit range)" if chosen == INTEGER_WINDOW else f"the window [{chosen[0]:g}, {chosen[1]:g}]"
    notes = [f"{kind} image scaled to 8-bit by {rule}"]
    if clipped:
        notes.append(f"{clipped:.1%} of pixels outside [{chosen[0]:g}, {chosen[1]:g}] clipped (set bit_window / --bit-window)")
    return pixels, notes


def to_rgb(image: Image.Image, bit_window: Window | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Convert any PIL mode to (H, W, 3) uint8, saying what was changed."""
    notes: list[str] = []
    mode = image.mode
    if mode in HIGH_BIT_GREY_MODES:
        kind = "16-bit grey" if mode.startswith("I;16") else f"{mode}-mode grey"
        grey, notes = _high_bit_to_uint8(np.asarray(image), kind, bit_window, getattr(image, "filename", "") or "array")
        return np.repeat(grey[:, :, None], 3, axis=2), tuple(notes)
    if mode in ("L", "1", "LA"):
        notes.append("greyscale image replicated to RGB")
    if mode in ("RGBA", "LA", "PA"):
        notes.append("alpha channel dropped")
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return rgb, tuple(notes)


def _raw_mode(image: Image.Image) -> str:
    """The file's own pixel layout (e.g. "RGB;16B"), known before load(); PIL's mode hides 16-bit RGB."""
    if not image.tile:
        return ""
    args = image.tile[0].args if hasattr(image.tile[0], "args") else image.tile[0][3]
    return args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else ""


def _read_16_bit_rgb(path: Path, bit_window: Window | None) -> tuple[np.ndarray, list[str]]:
    """16-bit RGB(A) at full precision: PIL keeps only the high byte, so OpenCV reads it."""
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if array is None or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputImageError(f"cannot read 16-bit RGB image {path}")
    notes = ["alpha channel dropped"] if array.shape[2] == 4 else []
    rgb = array[:, :, 2::-1]  # OpenCV's BGR(A) to RGB
    pixels, scaled_notes = _high_bit_to_uint8(rgb, "16-bit RGB", bit_window, path)
    return pixels, scaled_notes + notes


def oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) the way a viewer shows the image (as PIL's ImageOps.exif_transpose)."""
    steps = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    step = steps.get(orientation)
    return np.ascontiguousarray(step(pixels)) if step else pixels


def check_shape(width: int, height: int, path: object) -> None:
    """Refuse images the models cannot take: a side under 2 px, or thinner than MAX_ASPECT_RATIO:1."""
    if width < 2 or height < 2:
        raise InputImageError(f"image too small: {path} is {width}x{height}")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise InputImageError(
            f"image too thin: {path} is {width}x{height} (aspect {ratio:.0f}:1, above {MAX_ASPECT_RATIO}:1); "
            f"crop it into tiles or pad it"
        )


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, bit_window: Window | None = None) -> LoadedImage:
    """Read an image file as RGB uint8, or raise InputImageError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"image not found: {path}")
    if path.is_dir():
        raise InputImageError(f"expected an image file, got a folder: {path}")
    notes: list[str] = []
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
                check_shape(width, height, path)
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    image.seek(0)
                    notes.append(f"multi-frame file: the first of its {frames} frames is used")
                raw = _raw_mode(image)  # before getexif(), which loads a PNG and clears its tile list
                orientation = int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
                if raw.startswith("RGB") and ";16" in raw:
                    pixels, converted = _read_16_bit_rgb(path, bit_window)
                else:
                    image.load()
                    pixels, converted = to_rgb(image, bit_window)
                notes.extend(converted)
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputImageError(f"image too large to decode safely: {path}") from None
    except UnidentifiedImageError:
        raise InputImageError(f"not an image file (or an unsupported format): {path}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputImageError(f"cannot read image {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if orientation in range(2, 9):
        pixels = oriented(pixels, orientation)
        notes.append(f"EXIF orientation {orientation} applied")
    return LoadedImage(path, pixels, tuple(notes))


def _same_or_inside(path: Path, folders: Iterable[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def _holds_results(folder: Path) -> bool:
    """Whether a folder is an earlier run's output (its fingerprint file); an unreadable folder is not."""
    try:
        return (folder / FINGERPRINT_FILE).is_file()
    except OSError:  # Python 3.11's is_file raises on EACCES; os.walk then notes the folder as unreadable
        return False


def find_images(root: str | Path, exclude: Sequence[str | Path] = (), report: Report | None = note_to_stderr) -> list[Path]:
    """Every image file under a folder, sorted, ignoring hidden files and folders.

    Also skipped: the folders in `exclude` (an output folder inside the input folder is never read back),
    folders holding an iapas fingerprint file (results of an earlier run), and folders that cannot be
    read, each skipped folder with a note to `report`.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputImageError(f"folder not found: {root}")
    excluded = [Path(folder).resolve() for folder in exclude]

    def unreadable(error: OSError) -> None:
        if report and Path(error.filename or "") != root:
            report(f"note: skipped unreadable folder {error.filename}: {error.strerror or error}")
        elif Path(error.filename or "") == root:
            raise InputImageError(f"cannot read folder {root}: {error.strerror or error}")

    found = []
    visited = {root.resolve()}  # symlinked folders are followed, each real folder once (no loops)
    for directory, folders, names in os.walk(root, onerror=unreadable, followlinks=True):
        here = Path(directory)
        try:  # a folder that is readable but not searchable (mode r without x) lists names it cannot stat
            images = [here / name for name in names
                      if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES and (here / name).is_file()]
        except OSError as error:
            unreadable(OSError(error.errno, error.strerror, str(here)))
            folders[:] = []  # nothing below it can be reached either
            continue
        kept = []
        for folder in sorted(folders, key=lambda name: ((here / name).is_symlink(), name)):  # a real folder before a link to it
            path = here / folder
            real = path.resolve()
            if folder.startswith(".") or real in visited:
                continue
            if _same_or_inside(real, excluded):
                continue  # the output folder: its maps and overlays are not inputs
            visited.add(real)
            if _holds_results(path):
                if report:
                    report(f"note: skipped {path}: it holds iapas results ({FINGERPRINT_FILE})")
                continue
            kept.append(folder)
        folders[:] = kept
        found.extend(images)
    return sorted(found)


def collect_inputs(items: Sequence[str | Path], exclude: Sequence[str | Path] = (),
                   report: Report | None = note_to_stderr) -> list[tuple[Path, Path | None]]:
    """Expand files and folders given on a command line into (image, folder it came from) pairs.

    A file reached twice (named twice, or named and inside a named folder) is kept once.
    """
    collected: list[tuple[Path, Path | None]] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item)
        if path.is_dir():
            images = find_images(path, exclude, report)
            if not images:
                raise InputImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in folder: {path}")
            pairs = [(image, path) for image in images]
        elif path.exists():
            pairs = [(path, None)]
        else:
            raise InputImageError(f"image not found: {path}")
        for image, root in pairs:
            key = image.resolve()
            if key not in seen:
                seen.add(key)
                collected.append((image, root))
    return collected
