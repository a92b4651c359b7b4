"""`iapas config show` and `iapas bench`: the effective configuration and per-stage timing."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (BENCHMARK, EXIT_OK, add_method_options, add_model_options, add_speed_options, add_threshold_options,
                     base_config, group, non_negative_int, positive_int)
from .export import add_runtime_options


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas config show` and `iapas bench`."""
    config = commands.add_parser("config", help="show the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective configuration as YAML")
    add_model_options(show)
    show.set_defaults(handler=run_config_show)

    bench = commands.add_parser("bench", help="time each stage on an image, or throughput over many")
    timing = group(bench, BENCHMARK)
    timing.add_argument("image", nargs="?", help="image file to segment repeatedly, or a folder with --images")
    timing.add_argument("--repeat", type=positive_int, default=5, help="timed runs of the one image (default 5)")
    timing.add_argument("--warmup", type=non_negative_int, default=1,
                        help="untimed runs first, so one-off start-up costs are not counted (default 1)")
    timing.add_argument("--images", type=non_negative_int, default=0,
                        help="throughput over N distinct images (procedural ones at --size when no folder is given)")
    timing.add_argument("--size", type=positive_int, default=1024, help="side of the procedural images (default 1024)")
    timing.add_argument("--random-full", action="store_true",
                        help="time Grounding DINO-T + SAM ViT-B at their real sizes with random weights (no weights needed); "
                             "with --profile fast*: SAM 2.1 Hiera-T, EdgeTAM or OmDet-Turbo")
    timing.add_argument("--vs-naive", action="store_true", help="also run the official code's per-image loop and report the ratio")
    timing.add_argument("--object-tag", default="object", help="the naive loop's object prompt (default: object)")
    timing.add_argument("--json", dest="json_path", help="write the numbers to this JSON file")
    add_method_options(bench)
    add_threshold_options(bench)
    add_model_options(bench)
    add_speed_options(bench)
    add_runtime_options(bench)
    bench.set_defaults(handler=run_bench)


def run_config_show(args: argparse.Namespace) -> int:
    """Print the configuration the other commands would use."""
    print(base_config(args).to_yaml(), end="")
    return EXIT_OK


def run_bench(args: argparse.Namespace) -> int:
    """Time the chosen method: each stage on one image, or throughput over many (optionally vs the naive loop)."""
    from ..bench.runner import BenchOptions, PipelineSegment, run_bench as bench
    from ..errors import ConfigError
    from ..acceleration.runtimes import check_method_runtimes
    from .method_options import check_method_options
    from .segment import build_segmenter

    if args.image is None and not args.images:
        raise ConfigError("give an IMAGE, or --images N for throughput over N procedural images")
    if args.vs_naive and not args.images:
        raise ConfigError("--vs-naive compares throughput: add --images N")
    check_method_options(args)  # an option the method would not read: one line, before any model loads
    config = base_config(args)
    check_method_runtimes(args.method, config)  # the CLIP methods' encoders are not exported: one line, not ignored
    if args.random_full:
        from ..weights.random_full import RANDOM_FULL_MAX_BOXES, random_full_models

        detector, segmenter = random_full_models(None, config.detection.backend, config.masking.backend)
        config = config.updated({"detection.weights": str(detector), "masking.weights": str(segmenter)})
        if args.max_boxes is None and not config.detection.max_boxes:  # a config file's own cap stands
            config = config.updated({"detection.max_boxes": RANDOM_FULL_MAX_BOXES})
            print(f"random weights keep hundreds of boxes: each image is capped at {RANDOM_FULL_MAX_BOXES} "
                  "(--max-boxes K changes it, 0 keeps all)")
    options = BenchOptions(Path(args.image) if args.image else None, args.method, args.repeat, args.warmup,
                           args.images, args.size, args.vs_naive, args.object_tag,
                           Path(args.json_path) if args.json_path else None, config.batch_size,
                           size_filter=not args.no_size_filter)
    if args.vs_naive:
        if args.method != "iapas":
            raise ConfigError("--vs-naive compares the IAP-AS pipeline with the official loop: use --method iapas")
        if args.calibration:
            raise ConfigError("--vs-naive compares at the command line's thresholds and prompts: drop --calibration "
                              "(the naive loop has no calibration)")
        if args.no_size_filter and config.filtering.size_rule != "calibrated":
            raise ConfigError(f"--no-size-filter with the {config.filtering.size_rule!r} size rule would drop iapas's "
                              "object question but not the naive loop's: compare with the recipe's own filter")
        from ..methods.iapas.pipeline import Pipeline

        # a per-image size rule asks about the naive loop's object tag, and only that one
        config = config.updated({"calibration.tags": [args.object_tag]})

        def build():
            pipeline = Pipeline.from_config(config)
            if args.no_size_filter:
                pipeline.graph = pipeline.graph.without("size_filter")
            return PipelineSegment(pipeline, tuple(args.prompt) if args.prompt else pipeline.default_prompts())

        return bench(options, config, build)
    return bench(options, config, lambda: build_segmenter(args, config)[0])
