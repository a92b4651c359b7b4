"""`iapas data synth`: a procedural MVTec-layout anomaly dataset with exact masks."""
from __future__ import annotations

import argparse

from ..errors import IapasError
from .common import EXIT_OK


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas data synth`."""
    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="write a procedural MVTec-layout anomaly dataset with exact masks")
    synth.add_argument("-o", "--output", required=True)
    synth.add_argument("--categories", nargs="+", help="tile fabric washer board (default: all)")
    synth.add_argument("--train-good", type=int, default=4)
    synth.add_argument("--test-good", type=int, default=2)
    synth.add_argument("--per-defect", type=int, default=2)
    synth.add_argument("--size", type=int, default=256)
    synth.add_argument("--seed", type=int, default=111)
    synth.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    """Write the synthetic dataset and say how to evaluate on it."""
    from ..data.synth import SURFACES, SynthSpec, write_synth_dataset

    categories = tuple(args.categories or SynthSpec().categories)
    unknown = sorted(set(categories) - set(SURFACES))
    if unknown:
        raise IapasError(f"unknown synthetic category {unknown[0]!r} (choose from {', '.join(SURFACES)})")
    spec = SynthSpec(categories=categories, train_good=args.train_good, test_good=args.test_good,
                     per_defect=args.per_defect, size=args.size, seed=args.seed)
    root = write_synth_dataset(args.output, spec)
    print(f"wrote an MVTec-layout dataset to {root} ({', '.join(categories)}); evaluate it with "
          f"`iapas eval --dataset mvtec --root {root}`")
    return EXIT_OK
