"""The web app's decisions: a verdict at a chosen threshold, the binary mask and its regions, the colour bar,
the demo-weights banner, learned CLIP checkpoints, and several images at once. Free of Gradio, as `handlers`."""
from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import Config
from ..decisions.decide import Decision, DecisionSettings, decide
from ..errors import IapasError
from ..types import Result
from ..visualization.decisions import VERDICT_COLOURS, decision_picture
from .handlers import CHECKPOINT_KEYS, download_name  # noqa: F401  (named here too, as the page's modules read them)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
REGION_COLUMNS = ["#", "area px", "area %", "x0", "y0", "x1", "y1", "peak", "mean", "phrase"]
BATCH_COLUMNS = ["image", "verdict", "image score", "regions", "defect area px"]


def demo_banner(config: Config, methods: Sequence[str]) -> str:
    """Markdown for the page's banner when any method's models are random demo weights ("" when none are)."""
    from ..decisions.thresholds_file import demo_models

    found = sorted({model for method in methods for model in demo_models(config, method)})
    if not found:
        return ""
    return ("## ⚠ RANDOM DEMO WEIGHTS: maps and verdicts are meaningless\n"
            "These models were built with random weights by `iapas weights make-demo`: " + "; ".join(found) +
            ". Put real weights in the weights folder (see `iapas weights list`).")


def learned_checkpoints(config: Config) -> list[str]:
    """Trained-prompt checkpoints in the server's weights folder (its learned methods' sub-folders)."""
    root = Path(config.weights_dir)
    found: list[str] = []
    for method in sorted(CHECKPOINT_KEYS):
        folder = root / method
        if folder.is_dir():
            found += [str(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
    return found


@dataclass
class DecisionView:
    """What the page shows of one decided image."""

    decision: Decision
    picture: np.ndarray  # (H + strip, W, 3) uint8: overlay, contours, labels, verdict and colour bar
    mask: np.ndarray | None  # (H, W) uint8 0/255
    regions_table: list[list[Any]]
    verdict_html: str
    files: list[str]


def verdict_html(decision: Decision, threshold: float | None) -> str:
    """A large coloured verdict line (the page's most visible element)."""
    colour = "#%02x%02x%02x" % VERDICT_COLOURS.get(decision.verdict, (110, 110, 110))
    detail = (f"image score {decision.image_score:.4f} {'&gt;' if decision.verdict == 'anomalous' else '&le;'} "
              f"threshold {threshold:.4f}" if threshold is not None else f"image score {decision.image_score:.4f}, no threshold set")
    regions = f", {len(decision.regions)} defect region(s), {decision.defect_area_px} px" if decision.mask is not None else ""
    return (f'<div id="verdict-box" style="background:{colour};color:white;padding:12px 16px;border-radius:8px">'
            f'<span id="verdict" style="font-size:2em;font-weight:bold">{html.escape(decision.verdict.upper())}</span>'
            f'<br><span>{detail}{regions}</span></div>')


def decide_view(result: Result, pixels: np.ndarray, threshold: float | None, min_area: float = 0.0,
                name: str = "", out_dir: Path | None = None) -> DecisionView:
    """Decide one segmented image at `threshold` (image and pixel), write its mask and overlay named after it."""
    from PIL import Image

    from ..config import unit_interval
    from ..decisions.regions import parse_area

    if threshold is not None:
        threshold = unit_interval(float(threshold), "score threshold")
    settings = DecisionSettings(image_threshold=threshold, image_source="manual" if threshold is not None else "",
                                min_defect_area=parse_area(min_area or 0))
    decision = decide(result, settings)
    picture = decision_picture(pixels, result.anomaly_map, result.boxes, decision.verdict, decision.image_score,
                               decision.mask, decision.regions, decision.pixel_threshold)
    mask = None if decision.mask is None else np.where(decision.mask, 255, 0).astype(np.uint8)
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="iapas-decision-"))
    stem = download_name(name)
    files = [out_dir / f"{stem}_decision.png"]
    Image.fromarray(picture).save(files[0])
    if mask is not None:
        files.append(out_dir / f"{stem}_mask.png")
        Image.fromarray(mask).save(files[-1])
    table = [[i, r.area_px, round(100 * r.area_fraction, 3), *r.box, round(r.peak_score, 4), round(r.mean_score, 4), r.phrase]
             for i, r in enumerate(decision.regions, start=1)]
    return DecisionView(decision, picture, mask, table, verdict_html(decision, threshold), [str(f) for f in files])


def segment_batch(cache, paths: Sequence[str], request, threshold: float | None, min_area: float = 0.0,
                  progress: Callable[[float, str], None] = lambda fraction, message: None
                  ) -> tuple[list[list[Any]], list[tuple[np.ndarray, str]], list[str]]:
    """Several uploaded images: a table row, a gallery picture and the files of each (named after the image).

    An image that cannot be read or segmented gets a row saying why; the others go on.
    """
    import dataclasses

    from .handlers import read_upload, segment_request

    if not paths:
        raise IapasError("no images: upload one or more")
    rows, gallery, files = [], [], []
    for index, path in enumerate(paths):
        name = Path(path).name
        progress(index / len(paths), f"{name} ({index + 1} of {len(paths)})")
        try:
            pixels = read_upload(cache, path)  # the CLI's loader and rules, as a single upload
            response = segment_request(cache, pixels, dataclasses.replace(request, name=name))
            view = decide_view(response.result, pixels, threshold, min_area, name, Path(response.files[0]).parent)
        except IapasError as error:
            rows.append([name, "failed", None, None, str(error)])
            continue
        decision = view.decision
        rows.append([name, decision.verdict, round(decision.image_score, 4), len(decision.regions), decision.defect_area_px])
        gallery.append((view.picture, f"{name}: {decision.verdict} {decision.image_score:.3f}"))
        files += response.files + view.files
    return rows, gallery, files
