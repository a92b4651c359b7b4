"""The decision options every segmenting command shares (thresholds, MEBin, minimum area, ROI, exit status)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import IapasError
from .common import unit_float

if TYPE_CHECKING:
    from ..config import Config
    from ..decisions.decide import DecisionSettings

EXIT_ANOMALY = 3  # --fail-on-anomaly: some image was judged anomalous (a failure's exit 1 wins over it)
IAPAS_OWN_DECISION = "iapas: any kept box (the detector's box threshold decides)"


def area_option(text: str) -> float:
    """`--min-defect-area` checked when the command line is read."""
    from ..decisions.regions import parse_area

    try:
        return parse_area(text)
    except IapasError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_decision_options(group: argparse._ActionsContainer, exit_status: bool = True) -> None:
    """Add the decision options to a parser or argument group (segment; eval takes none of them)."""
    group.add_argument("--image-threshold", type=unit_float, metavar="T",
                       help="image score above T: anomalous (overrides --thresholds' image threshold)")
    group.add_argument("--pixel-threshold", type=unit_float, metavar="T",
                       help="map value above T: defect pixel (default: the image threshold)")
    group.add_argument("--thresholds", metavar="FILE",
                       help="thresholds file from `iapas threshold` or `iapas eval` (refused if made for other settings)")
    group.add_argument("--binarize", choices=("threshold", "mebin"),
                       help="defect mask: the pixel threshold (default) or MEBin, adaptive per output folder "
                            "(AnomalyNCD, CVPR 2025; needs no threshold)")
    group.add_argument("--min-defect-area", type=area_option, metavar="AREA",
                       help="smaller regions do not count: pixels (e.g. 50) or a fraction of the image (0.001 or 0.1%%)")
    group.add_argument("--roi", metavar="MASK.png", help="region of interest: scores where the mask is 0 are ignored")
    if exit_status:
        group.add_argument("--fail-on-anomaly", action="store_true",
                           help=f"exit {EXIT_ANOMALY} when any image is judged anomalous (exit 1 for failed images wins)")


def decision_settings(args: argparse.Namespace, config: "Config", method: str, options: Mapping[str, Any]) -> "DecisionSettings":
    """The run's DecisionSettings from its options; a thresholds file is checked against this run's setup first."""
    from ..decisions.decide import DecisionSettings
    from ..decisions.regions import file_sha256
    from ..decisions.thresholds_file import ThresholdsFile, refuse_per_image_normalisation, setup_identity
    from ..errors import DecisionError

    values: dict[str, Any] = {"binarize": getattr(args, "binarize", None) or "threshold",
                              "min_defect_area": getattr(args, "min_defect_area", None) or 0.0}
    if getattr(args, "thresholds", None):
        thresholds = ThresholdsFile.load(args.thresholds)
        thresholds.check_matches(setup_identity(config, method, options), args.thresholds)
        values.update(thresholds_file=str(args.thresholds), thresholds_file_sha256=file_sha256(args.thresholds))
        if thresholds.image is not None:
            values.update(image_threshold=thresholds.image.value, image_source=f"{thresholds.image.source} ({args.thresholds})")
        if thresholds.pixel is not None and values["binarize"] == "threshold":
            values.update(pixel_threshold=thresholds.pixel.value, pixel_source=f"{thresholds.pixel.source} ({args.thresholds})")
    if getattr(args, "image_threshold", None) is not None:
        values.update(image_threshold=args.image_threshold, image_source="manual")
    if getattr(args, "pixel_threshold", None) is not None:
        if values["binarize"] == "mebin":
            raise DecisionError("--pixel-threshold and --binarize mebin exclude each other: MEBin sets each mask's threshold")
        values.update(pixel_threshold=args.pixel_threshold, pixel_source="manual")
    if values.get("image_threshold") is not None:
        refuse_per_image_normalisation(config, method)
    elif method == "iapas" and config.scoring.normalise == "clip" and values["binarize"] == "threshold" \
            and values.get("pixel_threshold") is None:
        # IAP-AS decides by itself: its map is 0 wherever the detector (box threshold) kept no box
        values.update(image_threshold=0.0, image_source=IAPAS_OWN_DECISION)
    if getattr(args, "roi", None):
        from pathlib import Path

        roi = Path(args.roi)
        if not roi.is_file():
            raise DecisionError(f"region-of-interest mask not found: {roi}")
        values.update(roi=str(roi.resolve()), roi_sha256=file_sha256(roi))
    if getattr(args, "thresholds", None):
        fitted_roi, run_roi = thresholds.fitted_on.get("roi_sha256"), values.get("roi_sha256") or None
        if fitted_roi != run_roi:  # inside a ROI the image score is the map's maximum there: another scale
            where = ("inside another region of interest" if fitted_roi and run_roi else
                     "inside a region of interest; give the same --roi" if fitted_roi else "on whole images")
            raise DecisionError(f"thresholds file {args.thresholds} was fitted {where}; scores inside a region of interest "
                                f"and on whole images differ, so fit thresholds with this run's --roi (`iapas threshold --roi`)")
    return DecisionSettings(**values)


def fingerprint_part(settings: "DecisionSettings") -> dict[str, Any]:
    """What of the decision settings defines a run's results (the ROI and thresholds file by content, not path)."""
    record = settings.to_dict()
    record.pop("roi", None)
    record.pop("thresholds_file", None)
    for key in ("image_source", "pixel_source"):
        record[key] = record[key].split(" (")[0]
    return record
