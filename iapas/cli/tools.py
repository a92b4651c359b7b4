"""`iapas config show` and `iapas bench`: the effective configuration and per-stage timing."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, add_method_options, add_model_options, add_threshold_options, base_config


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas config show` and `iapas bench`."""
    config = commands.add_parser("config", help="show the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective configuration as YAML")
    add_model_options(show)
    show.set_defaults(handler=run_config_show)

    bench = commands.add_parser("bench", help="time each stage on an image")
    bench.add_argument("image", help="image file to segment repeatedly")
    bench.add_argument("--repeat", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    add_method_options(bench)
    add_threshold_options(bench)
    add_model_options(bench)
    bench.set_defaults(handler=run_bench)


def run_config_show(args: argparse.Namespace) -> int:
    """Print the configuration the other commands would use."""
    print(base_config(args).to_yaml(), end="")
    return EXIT_OK


def run_bench(args: argparse.Namespace) -> int:
    """Time each stage of the chosen method on one image."""
    from ..bench import BenchOptions, run_bench as bench
    from .segment import build_segmenter

    config = base_config(args)
    options = BenchOptions(Path(args.image), args.method, args.repeat, args.warmup)
    return bench(options, config, lambda: build_segmenter(args, config)[0])
