"""`iapas threshold`: image and pixel thresholds from known-good images only -> a thresholds file for `segment`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (DECISIONS, EXIT_OK, INPUTS_OUTPUTS, _argument_type, add_method_options, add_model_options,
                     add_speed_options, add_threshold_options, base_config, group)


def _non_negative_float(value: float, name: str) -> float:
    from ..errors import ValueRangeError

    if not 0 <= value < float("inf"):
        raise ValueRangeError(f"{name} must be a number of 0 or more, got {value}")
    return value


non_negative_float = _argument_type(_non_negative_float, "float")


def add_fit_options(parser: argparse._ActionsContainer) -> None:
    """The normal-images rule's parameters (threshold, and calibrate's --thresholds-out)."""
    from ..decisions.thresholds import DEFAULT_MARGIN_SD, MIN_NORMAL_IMAGES

    parser.add_argument("--image-margin-sd", type=non_negative_float, default=DEFAULT_MARGIN_SD, metavar="K",
                        help=f"image threshold = max of the normal image scores + K x their sd (default {DEFAULT_MARGIN_SD:g}; "
                             f"at least {MIN_NORMAL_IMAGES} images)")
    parser.add_argument("--pixel-margin-sd", type=non_negative_float, default=DEFAULT_MARGIN_SD, metavar="K",
                        help=f"pixel threshold = max of the normal maps' maxima + K x their sd (default {DEFAULT_MARGIN_SD:g})")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas threshold`."""
    threshold = commands.add_parser("threshold", help="fit image and pixel thresholds from normal images only -> thresholds file")
    io, decisions = group(threshold, INPUTS_OUTPUTS), group(threshold, DECISIONS)
    io.add_argument("normal_dir", help="folder of known-good images (at least 10)")
    io.add_argument("-o", "--output", default="thresholds.json", help="thresholds file (default: thresholds.json)")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_method_options(threshold)
    add_threshold_options(threshold)
    add_fit_options(decisions)
    decisions.add_argument("--roi", metavar="MASK.png", help="region of interest: fit on the scores inside it only")
    add_model_options(threshold)
    add_speed_options(threshold)
    threshold.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Score the normal images with the method as `segment` would, fit the rule, write the file."""
    from ..decisions.fitting import fit_normal_thresholds
    from ..decisions.thresholds import NormalImagesRule
    from ..decisions.thresholds_file import refuse_per_image_normalisation, setup_identity
    from ..files import check_writable_file
    from ..images import find_images, parse_window
    from .segment import build_segmenter, check_method_options, map_options

    check_writable_file(args.output, "thresholds file")
    config = base_config(args)
    check_method_options(args)
    refuse_per_image_normalisation(config, args.method, "a threshold fitted on normal images")
    rule = NormalImagesRule(args.image_margin_sd, args.pixel_margin_sd)
    if Path(args.normal_dir).is_dir():
        rule.check_count(len(find_images(args.normal_dir)))  # before any model loads
    identity = setup_identity(config, args.method, map_options(args))
    segment = build_segmenter(args, config)[0]
    thresholds = fit_normal_thresholds(segment, args.normal_dir, identity, rule, config.batch_size,
                                       config.max_image_pixels, parse_window(config.bit_window), args.roi,
                                       not args.no_progress)
    thresholds.save(args.output)
    print(f"image threshold {thresholds.image.value:.6f}, pixel threshold {thresholds.pixel.value:.6f} "
          f"from {thresholds.fitted_on['images']} normal images -> {args.output}", file=sys.stderr)
    return EXIT_OK
