"""`iapas calibrate`: preprocessing (tags, size threshold, LLM prompts) -> a calibration file."""
from __future__ import annotations

import argparse
from pathlib import Path


from ..errors import IapasError
from .common import (EXIT_OK, INPUTS_OUTPUTS, PREPROCESSING, add_model_options, add_preprocessing_options, base_config, comma_list,
                     group, positive_int)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas calibrate`."""
    calibrate = commands.add_parser("calibrate", help="preprocessing: tags, size threshold and LLM prompts -> calibration file")
    io, preprocessing = group(calibrate, INPUTS_OUTPUTS), group(calibrate, PREPROCESSING)
    io.add_argument("normal_dir", nargs="?", help="folder of normal images")
    io.add_argument("--show", metavar="FILE", help="print a calibration file as a table and exit")
    io.add_argument("--anomalous-dir", help="images for the size threshold (default: the chosen normal images)")
    io.add_argument("-o", "--output", default="calib.json", help="calibration file to write (default: calib.json)")
    preprocessing.add_argument("--category", help="category name (fixed tag when there is no tagger; texture categories set --kind)")
    preprocessing.add_argument("--kind", choices=("object", "texture"), help="box/text thresholds 0.2 (object) or 0.1 (texture)")
    preprocessing.add_argument("--n-images", type=positive_int, help="normal images to tag (default 3)")
    preprocessing.add_argument("--clip", dest="clip_weights", help="CLIP directory (the clip tagger; default: the weights dir's)")
    preprocessing.add_argument("--tags", nargs="+", help="fixed tags (the fixed tagger)")
    preprocessing.add_argument("--template", help="prompt template name or .txt path (default iap_v1)")
    preprocessing.add_argument("--ablate", help="comma list of preprocessing steps to skip: tagging,llm")
    io.add_argument("--thresholds-out", metavar="FILE",
                    help="also fit image and pixel thresholds on NORMAL_DIR (every image, at least 10) with the new "
                         "calibration, as `iapas threshold` does, and write them to FILE")
    from .threshold import add_fit_options

    add_fit_options(calibrate)
    add_preprocessing_options(calibrate)
    add_model_options(calibrate)
    calibrate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write a calibration file from normal images, or print one with --show."""
    from rich.console import Console

    from ..calibration import calibration_table, load_calibration

    console = Console(width=160)
    if args.show:
        console.print(calibration_table(load_calibration(args.show), title=str(args.show)))
        return EXIT_OK
    if not args.normal_dir:
        raise IapasError("calibrate needs NORMAL_DIR (or --show FILE)")
    from ..files import check_writable_file
    from ..images import find_images
    from ..methods.iapas.pipeline import Pipeline

    check_writable_file(args.output, "calibration file")  # before any model loads
    if not Path(args.normal_dir).is_dir():
        raise IapasError(f"normal-image folder not found: {args.normal_dir}")
    if not find_images(args.normal_dir):
        raise IapasError(f"no images found in folder: {args.normal_dir}")
    config = base_config(args)
    rule = thresholds_rule(args, config)  # its refusals come before any model loads
    pipeline = Pipeline.from_config(config)
    calibration = pipeline.calibrate(args.normal_dir, args.anomalous_dir, args.category, args.kind, comma_list(args.ablate))
    path = calibration.save(args.output)
    console.print(calibration_table(calibration, title=str(path)))
    if rule is not None:
        write_thresholds(args, config, pipeline, calibration, path, rule)
    return EXIT_OK


def thresholds_rule(args: argparse.Namespace, config):
    """The normal-images rule for --thresholds-out (None without it), checked against the folder and recipe."""
    if not args.thresholds_out:
        return None
    from ..decisions.thresholds import NormalImagesRule
    from ..decisions.thresholds_file import refuse_per_image_normalisation
    from ..files import check_writable_file
    from ..images import find_images

    check_writable_file(args.thresholds_out, "thresholds file")
    refuse_per_image_normalisation(config, "iapas", "a threshold fitted on normal images")
    rule = NormalImagesRule(args.image_margin_sd, args.pixel_margin_sd)
    rule.check_count(len(find_images(args.normal_dir)))
    return rule


def write_thresholds(args: argparse.Namespace, config, pipeline, calibration, path: Path, rule) -> None:
    """Score every normal image with the new calibration, as `segment --calibration` will, and save the thresholds."""
    import sys

    from ..decisions.fitting import fit_normal_thresholds
    from ..decisions.thresholds_file import setup_identity
    from .segment import PipelineCall

    identity = setup_identity(config, "iapas", {"prompts": None, "calibration": path, "no_size_filter": False,
                                                "category": None})
    thresholds = fit_normal_thresholds(PipelineCall(pipeline, {"calibration": calibration}), args.normal_dir, identity,
                                       rule, config.batch_size, config.max_image_pixels)
    thresholds.save(args.thresholds_out)
    print(f"image threshold {thresholds.image.value:.6f}, pixel threshold {thresholds.pixel.value:.6f} "
          f"-> {args.thresholds_out} (use with --calibration {path})", file=sys.stderr)
