"""The `iapas` command: a thin layer over the Python API; every IapasError becomes one line."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .. import __version__
from ..errors import IapasError
from . import calibrate, data, evaluate, export, reproduce, segment, serve, threshold, tools, train, weights
from .common import EXIT_ERROR, CommandParser, apply_numeric_rules

# each module registers its own sub-commands; a new command is one new module added here
COMMAND_MODULES = (segment, calibrate, evaluate, train, data, weights, tools, serve, export, reproduce, threshold)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command module's sub-commands."""
    parser = CommandParser(prog="iapas", description="Training-free zero-shot industrial anomaly segmentation (IAP-AS).")
    parser.add_argument("--version", action="version", version=f"iapas {__version__}", help="print iapas's version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(commands)
    return apply_numeric_rules(parser)  # every numeric option is checked in one place, whichever module declares it


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not getattr(args, "needs_network", False):  # only `weights download` may reach a server
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model loads from a local path
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return args.handler(args)
    except IapasError as error:
        print(f"iapas: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("iapas: interrupted; finished results are kept and a re-run resumes", file=sys.stderr)
        return 130
    except Exception as error:  # one line, never a traceback, unless asked for
        if args.debug:
            raise
        message = str(error).splitlines()[0] if str(error) else ""
        print(f"iapas: internal error: {type(error).__name__}: {message} (re-run with --debug for details)", file=sys.stderr)
        return EXIT_ERROR
