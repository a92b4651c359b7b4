"""`iapas train`: train a learned comparison method (AdaCLIP-style prompts)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import IapasError
from .common import EXIT_OK, add_model_options, base_config, comma_list


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas train adaclip`."""
    from ..data.datasets import DATASETS

    train = commands.add_parser("train", help="train a learned comparison method")
    train_commands = train.add_subparsers(dest="train_command", required=True)
    adaclip = train_commands.add_parser(
        "adaclip", help="train AdaCLIP on auxiliary datasets (the reference: VisA + ClinicDB to test on MVTec AD, "
                        "MVTec AD + ColonDB to test on VisA and the others)")
    adaclip.add_argument("--dataset", required=True, action="append", choices=DATASETS.names(),
                         help="an auxiliary dataset; repeat with --root for several, e.g. --dataset visa --root V "
                              "--dataset medical --root ClinicDB")
    adaclip.add_argument("--root", required=True, action="append", help="the root of each --dataset, in order")
    adaclip.add_argument("-o", "--output", required=True, help="checkpoint folder; an existing one is resumed")
    adaclip.add_argument("--epochs", type=int, default=5, help="AdaCLIP: 5 (caoyunkang/AdaCLIP train.py)")
    adaclip.add_argument("--batch-size", type=int, default=1, help="AdaCLIP: 1")
    adaclip.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate (AdaCLIP: 0.01)")
    adaclip.add_argument("--image-size", type=int, default=518, help="input size in pixels (AdaCLIP: 518)")
    adaclip.add_argument("--seed", type=int, default=111)
    adaclip.add_argument("--layers", type=layer_list, default=(),
                         help="comma list of ViT layers, e.g. 6,12,18,24 (default: four evenly spaced)")
    adaclip.add_argument("--prompt-length", type=int, default=5, help="prompt tokens per layer (AdaCLIP: 5)")
    adaclip.add_argument("--prompt-depth", type=int, default=0,
                         help="layers of each encoder that get prompts (default: AdaCLIP's 4, fewer for a shallower CLIP)")
    adaclip.add_argument("--limit", type=int, default=0, help="at most N training images")
    adaclip.add_argument("--clip", dest="clip_weights", help="CLIP directory (default: the weights dir's)")
    adaclip.add_argument("--no-progress", action="store_true")
    add_model_options(adaclip)
    adaclip.set_defaults(handler=run_adaclip)


def layer_list(text: str) -> tuple[int, ...]:
    """ViT layer numbers from "6,12,18,24"."""
    try:
        return tuple(int(layer) for layer in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers such as 6,12,18,24, got {text!r}") from None


def run_adaclip(args: argparse.Namespace) -> int:
    """Train (or resume) AdaCLIP prompts and report the last loss."""
    from ..methods.adaclip.train import AdaClipArchitecture, train_adaclip
    from ..prompt_learning import TrainOptions
    from ..device import resolve_device
    from ..weights import chosen_or_found
    if len(args.dataset) != len(args.root):
        raise IapasError(f"give one --root per --dataset ({len(args.dataset)} datasets, {len(args.root)} roots)")
    from ..files import check_writable_folder

    check_writable_folder(args.output, "checkpoint folder")  # before any model loads
    config = base_config(args)
    clip = chosen_or_found("clip", args.clip_weights, config.weights_dir)
    sources = [(name, Path(root)) for name, root in zip(args.dataset, args.root)]
    options = TrainOptions(
        dataset="+".join(args.dataset), root=sources[0][1], out_dir=Path(args.output), clip=clip, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, limit=args.limit,
        device=str(resolve_device(config.device)), progress=not args.no_progress,
    )
    architecture = AdaClipArchitecture(layers=args.layers, prompt_length=args.prompt_length, prompt_depth=args.prompt_depth,
                                       image_size=args.image_size)
    path, losses = train_adaclip(options, architecture, sources=sources)
    tail = f"; last loss {losses[-1]:.4f}" if losses else " (already trained)"
    print(f"AdaCLIP prompts: {path}{tail}", file=sys.stderr)
    return EXIT_OK
