"""`iapas segment`: segment images or folders, writing each result as it completes."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..calibration import Calibration
from ..errors import IapasError
from .common import EXIT_OK, EXIT_PARTIAL, add_model_options, base_config


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas segment`."""
    segment = commands.add_parser("segment", help="segment images or folders of images")
    segment.add_argument("inputs", nargs="+", help="image files and/or folders (png, jpg, bmp, tif)")
    segment.add_argument("-o", "--output", default="iapas-out", help="output folder (default: iapas-out)")
    segment.add_argument("--prompt", action="append", help="text prompt; repeat for several (default: abnormal, defect)")
    segment.add_argument("--method", default="iapas", help="iapas (default), winclip or adaclip")
    segment.add_argument("--category", help="class name for the CLIP methods' prompts (default: object)")
    segment.add_argument("--clip", dest="clip_weights", help="CLIP directory for --method winclip/adaclip")
    segment.add_argument("--adaclip-prompts", help="trained AdaCLIP prompts (from `iapas train adaclip`)")
    segment.add_argument("--calibration", help="calibration file from `iapas calibrate` (P_final, S_threshold, thresholds)")
    segment.add_argument("--box-threshold", type=float, help="default 0.2 (paper, objects; 0.1 for textures)")
    segment.add_argument("--text-threshold", type=float, help="default 0.2 (paper, objects; 0.1 for textures)")
    segment.add_argument("--nms-iou", type=float, help="default 0.5 (paper)")
    segment.add_argument("--size-threshold", type=float, help="box area / image area cap, default 0.8 (paper)")
    segment.add_argument("--no-size-filter", action="store_true", help="skip step 2-2's size filter (ablation)")
    segment.add_argument("--overwrite", action="store_true", help="redo images whose results already exist")
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(segment)
    segment.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Segment every input with the chosen method; exit 1 when some images failed."""
    from ..batch import run_batch
    from ..images import collect_inputs

    inputs = collect_inputs(args.inputs)  # bad paths fail here, before any model loads
    config = base_config(args)
    segment, extra = iapas_segmenter(args, config) if args.method == "iapas" else clip_segmenter(args, config)
    summary = run_batch(segment, inputs, Path(args.output), overwrite=args.overwrite, max_pixels=config.max_image_pixels,
                        progress=not args.no_progress, extra_record=extra)
    print(summary.line(), file=sys.stderr)
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def iapas_segmenter(args: argparse.Namespace, config):
    """The IAP-AS pipeline as a pixels -> Result callable, with its prompts or calibration."""
    from ..pipeline import Pipeline

    options: dict = {}
    if args.prompt:
        options["prompts"] = args.prompt
    if args.calibration:
        options["calibration"] = calibration_with_overrides(args)
    pipeline = Pipeline.from_config(config)
    if args.no_size_filter:
        pipeline.graph = pipeline.graph.without("size_filter")
    extra = {"calibration": str(args.calibration)} if args.calibration else None
    return (lambda pixels: pipeline.segment(pixels, **options)), extra


def clip_segmenter(args: argparse.Namespace, config):
    """A registered comparison method (WinCLIP, AdaCLIP, ...) as a pixels -> Result callable."""
    from ..methods import METHODS

    ignored = [option for option, value in (("--prompt", args.prompt), ("--calibration", args.calibration),
                                            ("--no-size-filter", args.no_size_filter)) if value]
    if ignored:
        raise IapasError(f"{', '.join(ignored)} only apply to --method iapas, not {args.method}")
    category = args.category or "object"
    method = METHODS.get(args.method)(config, ())
    method.prepare(category, [], "object", Path(args.output))
    return method.segment, {"category": category}


def calibration_with_overrides(args: argparse.Namespace) -> Calibration:
    """The calibration file, with any threshold given on the command line taking precedence."""
    from ..calibration import load_calibration

    calibration = load_calibration(args.calibration)
    overrides = {
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold,
        "size_threshold": args.size_threshold,
    }
    return dataclasses.replace(calibration, **{k: v for k, v in overrides.items() if v is not None})
