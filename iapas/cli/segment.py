"""`iapas segment`: segment images or folders, writing each result as it completes."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import IapasError
from .common import (DECISIONS, ENGINE, EXIT_OK, EXIT_PARTIAL, IAPAS_DETECTOR, INPUTS_OUTPUTS, add_method_options,
                     add_model_options, add_speed_options, add_threshold_options, base_config, group, non_negative_int)
from .decisions import EXIT_ANOMALY, add_decision_options
from .method_options import check_method_options
from .export import add_runtime_options

if TYPE_CHECKING:
    from ..calibration import Calibration
    from ..runs.batch import Segment


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas segment`."""
    from ..engines import ENGINES  # names and import paths only

    segment = commands.add_parser("segment", help="segment images or folders of images")
    io, engine = group(segment, INPUTS_OUTPUTS), group(segment, ENGINE)
    io.add_argument("inputs", nargs="*", help="image files and/or folders (png, jpg, bmp, tif); URIs with --engine ray")
    io.add_argument("-o", "--output", default="iapas-out", help="output folder (default: iapas-out)")
    io.add_argument("--list", dest="list_file", help="a text file of image paths or URIs, one a line")
    io.add_argument("--bit-window", type=window_option, metavar="LOW,HIGH",
                    help="16-bit/float images: map raw values LOW..HIGH to 0..255 (default: value/257, floats 0..1)")
    io.add_argument("--overwrite", action="store_true", help="redo images whose results already exist")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_method_options(segment)
    add_threshold_options(segment)
    group(segment, IAPAS_DETECTOR).add_argument(
        "--tags", nargs="+", metavar="TAG",
        help="the object tag(s) the official recipe's size rule looks for on every image "
             "(default: the calibration's, else the config's calibration.tags)")
    add_model_options(segment)
    add_speed_options(segment)
    add_runtime_options(segment)
    engine.add_argument("--engine", default="local", choices=ENGINES.names(),
                        help="local (default) or ray: the same pipeline on a Ray cluster")
    engine.add_argument("--address", help="Ray cluster address (default: start a local Ray, or RAY_ADDRESS)")
    engine.add_argument("--workers", type=non_negative_int, default=0,
                        help="Ray actors (default 0: one per GPU, else one per CPU)")
    engine.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="seconds --address may take to accept a connection before the run stops (default 30)")
    engine.add_argument("--verbose", action="store_true", help="let Ray print its own logs (quiet by default)")
    add_decision_options(group(segment, DECISIONS))  # verdicts, defect masks and regions (docs/decisions.md)
    segment.set_defaults(handler=run)


def window_option(text: str) -> list[float]:
    """`--bit-window LOW,HIGH` as two numbers, checked when the command line is read."""
    from ..images import parse_window

    try:
        return list(parse_window(text) or ())
    except IapasError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    """Segment every input with the chosen engine and method; exit 1 when some images failed or the batch stopped."""
    from ..engines import ENGINES
    from ..engines.ray_engine import is_uri
    from ..files import check_writable_folder
    from ..runs.fingerprint import (SEGMENT_FIELDS, RunSpec, build_fingerprint, check_fingerprint, model_paths,
                                    record_fingerprint)
    from ..images import collect_inputs, parse_window
    from ..acceleration.runtimes import check_method_runtimes

    check_method_options(args)  # first: under --engine ray the segmenter is built inside an actor
    out_dir = Path(args.output)
    items = list(args.inputs) + listed_inputs(args.list_file)
    if not items:
        raise IapasError("no inputs: give image files, folders or --list FILE")
    uris = [item for item in items if is_uri(item)]
    if uris and args.engine != "ray":
        raise IapasError(f"{uris[0]} is a URI: read URIs with --engine ray")
    engine = ENGINES.get(args.engine)
    check_writable_folder(out_dir)  # a file or a read-only folder fails here, before any model loads
    local = [item for item in items if not is_uri(item)]
    inputs = collect_inputs(local, exclude=[out_dir]) if local else []  # bad paths too; the output folder is never an input
    config = base_config(args)
    check_method_runtimes(args.method, config)  # before any model loads, and before a Ray worker would meet it
    min_images = set_scored(args.method)
    if min_images and args.engine != "local":
        raise IapasError(f"--method {args.method} scores the inputs as one set in one process: use --engine local")
    window = parse_window(config.bit_window)
    options = map_options(args)
    run_spec = RunSpec(config, args.method, options)
    fingerprint = build_fingerprint(run_spec, SEGMENT_FIELDS)
    from ..decisions.finish import finish_run
    from .decisions import decision_settings, fingerprint_part

    decisions = decision_settings(args, config, args.method, options)  # a thresholds file is checked before any model loads
    if decisions.active:
        fingerprint["decisions"] = fingerprint_part(decisions)  # another threshold, another result
    digest = check_fingerprint(out_dir, fingerprint, overwrite=args.overwrite)  # before any model loads
    record_fingerprint(out_dir, fingerprint)
    record = {**(extra_record(args) or {}), "decisions": decisions.to_dict()}
    if min_images:  # MuSc: the inputs are one set, scored together (iapas/runs/sets.py)
        summary = segment_as_set(args, config, inputs, out_dir, digest, window, min_images, record)
        # a set's results carry the set's own fingerprint (iapas/runs/sets.py): the folder's records are this run's
        finish_run(out_dir, None, decisions, summary.failures, f"iapas segment: {args.method}")
        print(summary.line(), file=sys.stderr)
        return exit_status(summary, out_dir, None, args.fail_on_anomaly)
    summary = engine(functools.partial(segmenter_only, args, config), inputs, out_dir, overwrite=args.overwrite,
                     max_pixels=config.max_image_pixels, progress=not args.no_progress, extra_record=record,
                     fingerprint=digest, bit_window=window, address=args.address, workers=args.workers, uris=uris,
                     batch_size=config.batch_size, connect_timeout=args.connect_timeout, verbose=args.verbose,
                     model_paths=tuple(Path(p) for p in model_paths(run_spec).values() if p))
    finish_run(out_dir, digest, decisions, summary.failures, f"iapas segment: {args.method}")
    print(summary.line(), file=sys.stderr)
    return exit_status(summary, out_dir, digest, args.fail_on_anomaly)


def exit_status(summary, out_dir: Path, digest: str | None, fail_on_anomaly: bool) -> int:
    """1 when images failed or the batch stopped (it wins: a failed image was not inspected), else 3 with
    --fail-on-anomaly when any finished image is anomalous, else 0."""
    if not summary.complete:
        return EXIT_PARTIAL
    if fail_on_anomaly:
        from ..decisions.summary import result_records

        anomalous = [name for name, record in result_records(out_dir, digest) if record.get("verdict") == "anomalous"]
        if anomalous:
            print(f"{len(anomalous)} image(s) judged anomalous, e.g. {anomalous[0]}", file=sys.stderr)
            return EXIT_ANOMALY
    return EXIT_OK


def map_options(args: argparse.Namespace) -> dict:
    """The command's options that change maps (beside the config): in the fingerprint and the thresholds file."""
    return {"prompts": args.prompt, "calibration": args.calibration, "no_size_filter": args.no_size_filter,
            "category": args.category if args.method != "iapas" else None}


def set_scored(method: str) -> int:
    """The fewest images a set-scoring method (MuSc) needs, 0 for a method that scores each image alone."""
    from ..methods import METHODS

    return int(getattr(METHODS.get(method), "min_set_size", 0))


def segment_as_set(args: argparse.Namespace, config: Config, inputs: list, out_dir: Path, digest: str, window,
                   min_images: int, record: dict | None = None):
    """Every input scored as one set by a set-scoring method, in this process (iapas/runs/sets.py)."""
    from ..methods import METHODS
    from ..runs.sets import progress_ticks, run_set

    if len(inputs) < min_images:  # before any model loads
        raise IapasError(f"--method {args.method} scores a set of at least {min_images} images together; "
                         f"{len(inputs)} image{'s' if len(inputs) != 1 else ''} given")

    def segment_set(images: list, groups: list) -> list:
        method = METHODS.get(args.method)(config, ())  # built only when the set is not already done
        method.prepare(args.category or "object", [], "object", out_dir)
        method.progress = progress_ticks(not args.no_progress)
        return method.segment_set(images, groups)

    return run_set(segment_set, inputs, out_dir, min_images, overwrite=args.overwrite,
                   max_pixels=config.max_image_pixels, progress=not args.no_progress,
                   extra_record=record if record is not None else extra_record(args),
                   fingerprint=digest, bit_window=window, method=args.method)


def listed_inputs(list_file: str | None) -> list[str]:
    """The non-empty, non-comment lines of a list file (paths or URIs)."""
    if not list_file:
        return []
    path = Path(list_file)
    if not path.is_file():
        raise IapasError(f"list file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def extra_record(args: argparse.Namespace) -> dict | None:
    """What each result's JSON says about how it was made, beyond the Result itself."""
    if args.method == "iapas":
        return {"calibration": str(args.calibration)} if args.calibration else None
    return {"category": args.category or "object"}


def segmenter_only(args: argparse.Namespace, config: Config) -> Segment:
    """The method as a pixels -> Result callable (module level, so an engine can pickle it to its workers)."""
    return build_segmenter(args, config)[0]


def build_segmenter(args: argparse.Namespace, config: Config) -> tuple[Segment, dict | None]:
    """The chosen method as a pixels -> Result callable, and what its records should say about it."""
    return iapas_segmenter(args, config) if args.method == "iapas" else clip_segmenter(args, config)


class PipelineCall:
    """The IAP-AS pipeline with fixed options as a Segment: one image by `__call__`, a batch by `many`."""

    def __init__(self, pipeline, options: dict) -> None:
        self.pipeline, self.options = pipeline, options

    def __call__(self, pixels):
        return self.pipeline.segment(pixels, **self.options)

    def many(self, images: list) -> list:
        return self.pipeline.segment_outcomes(images, len(images), **self.options)


def iapas_segmenter(args: argparse.Namespace, config: Config) -> tuple[Segment, dict | None]:
    """The IAP-AS pipeline as a pixels -> Result callable, with its prompts or calibration."""
    from ..methods.iapas.pipeline import Pipeline

    options: dict = {}
    if args.prompt:
        options["prompts"] = args.prompt
    if args.calibration:
        options["calibration"] = calibration_with_overrides(args)
    pipeline = Pipeline.from_config(config)
    if args.no_size_filter:
        pipeline.graph = pipeline.graph.without("size_filter")
    extra = {"calibration": str(args.calibration)} if args.calibration else None
    return PipelineCall(pipeline, options), extra


def clip_segmenter(args: argparse.Namespace, config: Config) -> tuple[Segment, dict | None]:
    """A registered comparison method (WinCLIP, AdaCLIP, ...) as a pixels -> Result callable."""
    from ..methods import METHODS
    from ..acceleration.runtimes import check_method_runtimes

    check_method_runtimes(args.method, config)
    category = args.category or "object"
    from ..methods.batching import MethodSegment

    method = METHODS.get(args.method)(config, ())
    method.prepare(category, [], "object", Path(getattr(args, "output", None) or "."))
    return MethodSegment(method), {"category": category}  # `many`: a batch through one CLIP forward (--batch-size)


def calibration_with_overrides(args: argparse.Namespace) -> Calibration:
    """The calibration file, with any threshold given on the command line taking precedence."""
    from ..calibration import load_calibration

    calibration = load_calibration(args.calibration)
    overrides = {
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold,
        "size_threshold": args.size_threshold,
        "tags": tuple(args.tags) if getattr(args, "tags", None) else None,
    }
    return dataclasses.replace(calibration, **{k: v for k, v in overrides.items() if v is not None})
