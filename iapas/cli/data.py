"""`iapas data synth`: a procedural MVTec-layout anomaly dataset with exact masks."""
from __future__ import annotations

import argparse

from ..errors import IapasError
from .common import DATASET, EXIT_OK, INPUTS_OUTPUTS, group, non_negative_int, positive_int


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas data synth`."""
    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="write a procedural MVTec-layout anomaly dataset with exact masks")
    group(synth, INPUTS_OUTPUTS).add_argument("-o", "--output", required=True, help="folder to write the dataset to")
    dataset = group(synth, DATASET)
    dataset.add_argument("--categories", nargs="+", help="tile fabric washer board (default: all)")
    dataset.add_argument("--train-good", type=non_negative_int, default=4, help="normal training images per category (default 4)")
    dataset.add_argument("--test-good", type=non_negative_int, default=2, help="normal test images per category (default 2)")
    dataset.add_argument("--per-defect", type=non_negative_int, default=2,
                         help="anomalous test images per defect type and category (default 2)")
    dataset.add_argument("--size", type=positive_int, default=256, help="side of the square images in pixels (default 256)")
    dataset.add_argument("--seed", type=int, default=111, help="random seed: the same seed writes the same dataset (default 111)")
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
