"""`iapas train`: train a learned comparison method (AdaCLIP-style prompts)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, add_model_options, base_config, comma_list


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas train adaclip` and `iapas train genclip`."""
    from ..data.datasets import DATASETS

    train = commands.add_parser("train", help="train a learned comparison method")
    train_commands = train.add_subparsers(dest="train_command", required=True)
    adaclip = train_commands.add_parser("adaclip", help="train AdaCLIP-style prompts on an auxiliary dataset (e.g. VisA)")
    adaclip.add_argument("--dataset", required=True, choices=DATASETS.names())
    adaclip.add_argument("--root", required=True)
    adaclip.add_argument("-o", "--output", required=True, help="checkpoint folder; an existing one is resumed")
    adaclip.add_argument("--epochs", type=int, default=5)
    adaclip.add_argument("--batch-size", type=int, default=8)
    adaclip.add_argument("--lr", type=float, default=1e-3)
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
    add_genclip_parser(train_commands)


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
    config = base_config(args)
    clip = chosen_or_found("clip", args.clip_weights, config.weights_dir)
    options = TrainOptions(
        dataset=args.dataset, root=Path(args.root), out_dir=Path(args.output), clip=clip, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, limit=args.limit,
        device=str(resolve_device(config.device)), progress=not args.no_progress,
    )
    architecture = AdaClipArchitecture(layers=args.layers, prompt_length=args.prompt_length, prompt_depth=args.prompt_depth)
    path, losses = train_adaclip(options, architecture)
    tail = f"; last loss {losses[-1]:.4f}" if losses else " (already trained)"
    print(f"AdaCLIP prompts: {path}{tail}", file=sys.stderr)
    return EXIT_OK


def add_genclip_parser(train_commands: argparse._SubParsersAction) -> None:
    """`iapas train genclip`, with the GenCLIP paper's training settings as defaults (B.4, §4.1)."""
    from ..data.datasets import DATASETS
    from ..methods.genclip.model import INPUT_SIZE
    from ..methods.genclip.train import BATCH_SIZE, EPOCHS, LEARNING_RATE

    genclip = train_commands.add_parser("genclip", help="train GenCLIP prompts on an auxiliary dataset (MVTec AD, or VisA to test on MVTec AD)")
    genclip.add_argument("--dataset", required=True, choices=DATASETS.names())
    genclip.add_argument("--root", required=True)
    genclip.add_argument("-o", "--output", required=True, help="checkpoint folder; an existing one is resumed")
    genclip.add_argument("--epochs", type=int, default=EPOCHS, help=f"default {EPOCHS} (paper)")
    genclip.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    genclip.add_argument("--lr", type=float, default=LEARNING_RATE, help=f"Adam learning rate, default {LEARNING_RATE} (paper)")
    genclip.add_argument("--seed", type=int, default=111)
    genclip.add_argument("--layers", type=layer_list, default=(), help="comma list of ViT layers (default: 6,12,18,24 for ViT-L/14)")
    genclip.add_argument("--input-size", type=int, default=INPUT_SIZE, help=f"input pixels, default {INPUT_SIZE} (paper)")
    genclip.add_argument("--limit", type=int, default=0, help="at most N training images")
    genclip.add_argument("--clip", dest="clip_weights", help="CLIP directory (default: ViT-L-14-336 from the weights dir, else the first CLIP)")
    genclip.add_argument("--no-progress", action="store_true")
    add_model_options(genclip)
    genclip.set_defaults(handler=run_genclip)


def run_genclip(args: argparse.Namespace) -> int:
    """Train (or resume) GenCLIP prompts and report the last loss."""
    from ..device import resolve_device
    from ..methods.genclip import PREFERRED_CLIPS
    from ..methods.genclip.train import GenClipArchitecture, train
    from ..prompt_learning import TrainOptions
    from ..weights import chosen_or_found, is_present, load_manifest

    config = base_config(args)
    preferred = [entry.location(Path(config.weights_dir)) for entry in load_manifest()
                 if entry.name in PREFERRED_CLIPS and is_present(entry, Path(config.weights_dir))]
    clip = chosen_or_found("clip", args.clip_weights, config.weights_dir) if args.clip_weights or not preferred else preferred[0]
    options = TrainOptions(
        dataset=args.dataset, root=Path(args.root), out_dir=Path(args.output), clip=clip, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, limit=args.limit,
        device=str(resolve_device(config.device)), progress=not args.no_progress,
    )
    path, losses = train(options, GenClipArchitecture(layers=args.layers, input_size=args.input_size))
    tail = f"; last loss {losses[-1]:.4f}" if losses else " (already trained)"
    print(f"GenCLIP prompts: {path}{tail}", file=sys.stderr)
    return EXIT_OK
