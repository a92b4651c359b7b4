"""`iapas eval`: a method over a dataset -> metrics tables, PR curves, a run record."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, add_model_options, add_winclip_options, add_preprocessing_options, base_config, comma_list


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas eval`."""
    from ..data.datasets import DATASETS
    from ..methods import METHODS

    evaluate = commands.add_parser("eval", help="evaluate a method on a dataset: metrics, tables, PR curves")
    evaluate.add_argument("--dataset", required=True, choices=DATASETS.names())
    evaluate.add_argument("--root", required=True, help="dataset root folder")
    evaluate.add_argument("--categories", nargs="+", help="default: every category found")
    evaluate.add_argument("--method", default="iapas", choices=METHODS.names())
    evaluate.add_argument("--ablate", help="comma list of IAP-AS steps to switch off: tagging,llm,filter (Table 3)")
    evaluate.add_argument("-o", "--output", default="results")
    evaluate.add_argument("--save-maps", action="store_true", help="also keep every anomaly map (.npy)")
    evaluate.add_argument("--image-score", choices=("max", "method"), default="max", help="image score: max of the map (default)")
    evaluate.add_argument("--compare-paper", action="store_true", help="print the paper's Table 1 numbers beside ours")
    evaluate.add_argument("--limit", type=int, default=0, help="at most N test images per category (smoke runs)")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.add_argument("--clip", dest="clip_weights", help="CLIP directory (tagger, winclip, adaclip)")
    evaluate.add_argument("--adaclip-prompts", help="trained AdaCLIP prompts")
    evaluate.add_argument("--genclip-prompts", help="trained GenCLIP prompts")
    add_winclip_options(evaluate)
    add_preprocessing_options(evaluate)
    add_model_options(evaluate)
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table (and the paper's numbers when asked) and name the run folder."""
    from ..evaluate import EvalOptions, run_eval
    from ..reports import paper_comparison

    options = EvalOptions(
        dataset=args.dataset, root=Path(args.root), out_dir=Path(args.output), method=args.method,
        categories=args.categories or (), ablate=comma_list(args.ablate),
        save_maps=args.save_maps, image_score=args.image_score, progress=not args.no_progress, limit=args.limit,
    )
    run_dir = run_eval(options, base_config(args))
    print((run_dir / "table.md").read_text(encoding="utf-8"))
    if args.compare_paper:
        comparison = paper_comparison(args.dataset, run_dir)
        print(comparison or f"the paper's Table 1 has no {args.dataset} row")
    print(f"results: {run_dir}", file=sys.stderr)
    return EXIT_OK
