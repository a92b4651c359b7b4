"""`iapas reproduce TABLE`: a paper's table in one command, ours beside the paper's numbers (iapas/reproduce/)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (CONFIG_OPTIONS, EXIT_OK, INPUTS_OUTPUTS, MODELS, PREPROCESSING, SPEED, comma_list, group, non_negative_int,
                     positive_int)

TABLE_NAMES = ("table1", "table3", "hepe-table1", "genclip-table1", "faprompt-table2")  # kept light: checked against the registry on run


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas reproduce`."""
    from ..config import PRECISIONS
    from ..device import DEVICE_CHOICES

    command = commands.add_parser("reproduce", help="rerun a paper's table and write ours / paper / difference (markdown, CSV, figure)")
    io, models = group(command, INPUTS_OUTPUTS), group(command, MODELS)
    speed, preprocessing = group(command, SPEED), group(command, PREPROCESSING)
    io.add_argument("table", help=f"which table: {', '.join(TABLE_NAMES)} (see docs/reproduce.md)")
    io.add_argument("--data", metavar="ROOT", help="folder holding the datasets under their usual names (mvtec_anomaly_detection, MPDD, ...)")
    io.add_argument("--dataset-root", action="append", default=[], metavar="NAME=DIR",
                         help="one dataset's folder, e.g. mvtec=/data/mvtec (repeatable; beside or instead of --data)")
    io.add_argument("-o", "--output", default="reproduce", help="output folder (runs, tables, figure; default: reproduce)")
    io.add_argument("--rows", help="comma list of rows to run (paper labels or method names; default: every row iapas has)")
    io.add_argument("--datasets", help="comma list of the table's datasets to run (default: all)")
    io.add_argument("--limit", type=non_negative_int, default=0, help="at most N test images per category (smoke runs; not the paper's numbers)")
    io.add_argument("--skip-missing", action="store_true", help="run what is present and mark the rest not run, instead of refusing")
    io.add_argument("--overwrite", action="store_true", help="redo finished categories (after changing settings)")
    models.add_argument("--weights", help="weights dir (default: $IAPAS_WEIGHTS, else ./weights when it holds files, else the per-user folder)")
    models.add_argument("--device", choices=DEVICE_CHOICES, help="default: auto (GPU when there is one)")
    speed.add_argument("--batch-size", type=positive_int, help="images per encoder forward (results equal one-by-one)")
    speed.add_argument("--precision", choices=PRECISIONS, help="fp32 (default, the reference numbers), bf16, fp16 or auto")
    preprocessing.add_argument("--llm", help="IAP-AS's LLM backend (the paper: hf with Meta-Llama-3-8B-Instruct)")
    preprocessing.add_argument("--llm-model", help="the LLM's model path or name")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.set_defaults(handler=run)


def dataset_roots(pairs: list[str]) -> dict[str, Path]:
    """NAME=DIR pairs as a mapping; a malformed pair is one line."""
    from ..errors import ConfigError

    roots = {}
    for pair in pairs:
        name, _, folder = pair.partition("=")
        if not name or not folder:
            raise ConfigError(f"--dataset-root wants NAME=DIR, got {pair!r}")
        roots[name.strip()] = Path(folder)
    return roots


def run(args: argparse.Namespace) -> int:
    """Check every input, run the table (resuming), write and print it."""
    from ..errors import ConfigError
    from ..reproduce.run import ReproduceOptions, reproduce
    from ..reproduce.tables import TABLES

    if args.table not in TABLES.names():
        raise ConfigError(f"unknown table {args.table!r} (choose from {', '.join(TABLES.names())})")
    if not args.data and not args.dataset_root:
        raise ConfigError("say where the datasets are: --data ROOT and/or --dataset-root NAME=DIR")
    overrides = {key: getattr(args, attribute) for attribute, key in CONFIG_OPTIONS.items() if getattr(args, attribute, None) is not None}
    options = ReproduceOptions(
        table=args.table, out_dir=Path(args.output), data_root=Path(args.data) if args.data else None,
        dataset_roots=dataset_roots(args.dataset_root), overrides=overrides, rows=comma_list(args.rows),
        datasets=comma_list(args.datasets), limit=args.limit, skip_missing=args.skip_missing, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    paths = reproduce(options)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"table: {paths['markdown']}, {paths['csv']}, {paths['figure']}", file=sys.stderr)
    return EXIT_OK
