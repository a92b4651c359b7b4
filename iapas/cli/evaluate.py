"""`iapas eval`: a method over a dataset -> metrics tables, PR curves, a run record."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from .common import (EVALUATION, EXIT_OK, INPUTS_OUTPUTS, METHOD, add_clip_options, add_hepe_options, add_model_options,
                     add_preprocessing_options, add_speed_options, base_config, comma_list, group, non_negative_int)
from .method_options import check_method_options


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas eval`."""
    from ..data.datasets import DATASETS
    from ..methods import METHODS
    from ..evaluation.protocols import PROTOCOLS

    evaluate = commands.add_parser("eval", help="evaluate a method on a dataset: metrics, tables, PR curves")
    io, method, evaluation = group(evaluate, INPUTS_OUTPUTS), group(evaluate, METHOD), group(evaluate, EVALUATION)
    io.add_argument("--dataset", required=True, choices=DATASETS.names(), help="the dataset's layout")
    io.add_argument("--root", required=True, help="dataset root folder")
    io.add_argument("--categories", nargs="+", help="default: every category found")
    io.add_argument("-o", "--output", default="results", help="folder of the run folders (default: results)")
    io.add_argument("--from-maps", metavar="DIR", help="evaluate saved maps (DIR/<image path relative to the root>.npy) instead of running a method")
    io.add_argument("--save-maps", action="store_true", help="also keep every anomaly map as <run>/maps/<image path>.npy")
    io.add_argument("--overwrite", action="store_true", help="redo finished categories (e.g. after changing settings)")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    method.add_argument("--method", default="iapas", choices=METHODS.names(), help="the method to evaluate (default: iapas)")
    method.add_argument("--ablate", help="comma list of steps to switch off: IAP-AS tagging,llm,filter (Table 3); "
                                         "HEPE text,vfm,afs (Table 2), anti-false-alarm,normal-image (Table 3)")
    evaluation.add_argument("--protocol", default="full", choices=PROTOCOLS.names(),
                            help="full (default): every test image at its own size; paper: how Table 1 was measured (400x400, category min-max)")
    evaluation.add_argument("--image-score", choices=("max", "method"), default="",
                            help="image score: max of the map, or the method's own (default: the method's rule; "
                                 "AdaCLIP: its HSF score, the others: max)")
    evaluation.add_argument("--compare-paper", action="store_true", help="print the paper's Table 1 numbers beside ours (needs --protocol paper)")
    evaluation.add_argument("--limit", type=non_negative_int, default=0,
                            help="at most N test images per category, normal and anomalous alike, drawn with --seed (smoke runs)")
    add_clip_options(evaluate, "CLIP directory (the tagger, and the CLIP methods)")
    add_hepe_options(evaluate)
    add_preprocessing_options(evaluate)
    add_model_options(evaluate)
    add_speed_options(evaluate)  # --batch-size through each method's batched entry point, --precision
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table (and the paper's numbers when asked) and name the run folder."""
    from ..errors import ConfigError
    from ..evaluation.evaluate import EvalOptions, run_eval
    from ..evaluation.reports import paper_comparison

    if args.compare_paper and args.protocol != "paper":
        raise ConfigError(f"--compare-paper needs --protocol paper: Table 1 was measured at 400x400 with per-category "
                          f"normalisation, not as --protocol {args.protocol} measures")
    check_method_options(args)  # before any model loads
    config = base_config(args)
    options = EvalOptions(
        dataset=args.dataset, root=Path(args.root), out_dir=Path(args.output), method=args.method,
        categories=args.categories or (), ablate=comma_list(args.ablate),
        save_maps=args.save_maps, image_score=args.image_score, progress=not args.no_progress, limit=args.limit,
        seed=config.calibration.seed,
        recipe=config.recipe, normal_split=config.calibration.normal_split,
        overwrite=args.overwrite,
        protocol=args.protocol, from_maps=Path(args.from_maps) if args.from_maps else None,
    )
    run_dir = run_eval(options, config)
    print((run_dir / "table.md").read_text(encoding="utf-8"))
    if args.compare_paper:
        comparison = paper_comparison(args.dataset, run_dir)
        print(comparison or f"the paper's Table 1 has no {args.dataset} row")
    print(f"results: {run_dir}", file=sys.stderr)
    return EXIT_OK
