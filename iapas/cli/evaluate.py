"""`iapas eval`: a method over a dataset -> metrics tables, PR curves, a run record."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from .common import (EXIT_OK, add_adaclip_size_option, add_model_options, add_preprocessing_options, add_speed_options, add_winclip_options, base_config,
                     comma_list, non_negative_int)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas eval`."""
    from ..data.datasets import DATASETS
    from ..methods import METHODS
    from ..evaluation.protocols import PROTOCOLS

    evaluate = commands.add_parser("eval", help="evaluate a method on a dataset: metrics, tables, PR curves")
    evaluate.add_argument("--dataset", required=True, choices=DATASETS.names())
    evaluate.add_argument("--root", required=True, help="dataset root folder")
    evaluate.add_argument("--categories", nargs="+", help="default: every category found")
    evaluate.add_argument("--method", default="iapas", choices=METHODS.names())
    evaluate.add_argument("--ablate", help="comma list of IAP-AS steps to switch off: tagging,llm,filter (Table 3)")
    evaluate.add_argument("-o", "--output", default="results")
    evaluate.add_argument("--protocol", default="full", choices=PROTOCOLS.names(),
                          help="full (default): every test image at its own size; paper: how Table 1 was measured (400x400, category min-max)")
    evaluate.add_argument("--from-maps", metavar="DIR", help="evaluate saved maps (DIR/<image path relative to the root>.npy) instead of running a method")
    evaluate.add_argument("--save-maps", action="store_true", help="also keep every anomaly map as <run>/maps/<image path>.npy")
    evaluate.add_argument("--image-score", choices=("max", "method"), default="",
                          help="image score: max of the map, or the method's own (default: the method's rule; "
                               "AdaCLIP: its HSF score, the others: max)")
    evaluate.add_argument("--compare-paper", action="store_true", help="print the paper's Table 1 numbers beside ours (needs --protocol paper)")
    evaluate.add_argument("--limit", type=non_negative_int, default=0,
                          help="at most N test images per category, normal and anomalous alike, drawn with --seed (smoke runs)")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.add_argument("--overwrite", action="store_true", help="redo finished categories (e.g. after changing settings)")
    evaluate.add_argument("--clip", dest="clip_weights", help="CLIP directory (tagger, winclip, adaclip)")
    evaluate.add_argument("--adaclip-prompts", help="AdaCLIP weights: ours, an official pretrained_*.pth, or a manifest name")
    add_adaclip_size_option(evaluate)
    evaluate.add_argument("--prompts", help="trained prompts of a learned method (anomalyclip, faprompt, adaclip)")
    evaluate.add_argument("--genclip-prompts", help="trained GenCLIP prompts")
    add_winclip_options(evaluate)
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
