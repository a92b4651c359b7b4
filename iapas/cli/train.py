"""`iapas train <method>`: train a learned comparison method (AdaCLIP, AnomalyCLIP, FAPrompt) on an auxiliary dataset.

Every learned method gets the same options (dataset, output folder that is resumed, epochs, batch,
learning rate, seed, limit, CLIP) with its paper's defaults, plus its own; the methods are a
registry of trainers, so a new one is one entry here and one train function in its folder.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import IapasError
from ..registry import Registry
from .common import EXIT_OK, add_model_options, base_config, comma_list


@dataclass(frozen=True)
class Trainer:
    """How `iapas train <name>` runs one method: its defaults, its own options and its train function."""

    title: str
    help: str
    train: str  # "module:function" taking (TrainOptions, architecture) -> (prompt file, losses)
    architecture: str  # "module:Class" built from the method's own options
    epochs: int
    batch_size: int
    learning_rate: float
    add_options: Callable[[argparse.ArgumentParser], None]
    architecture_options: Callable[[argparse.Namespace], dict[str, Any]]
    several_datasets: bool = False  # the train function takes `sources`: several auxiliary sets at once
    # architecture settings the recipe decides (e.g. the official code's rules under --recipe official)
    config_options: Callable[[Any], dict[str, Any]] = lambda config: {}
    # AnomalyCLIP / FAPrompt: the architecture takes the recipe's PromptRules, and the prompt file can be written in
    # the authors' full key layout (--save-format official)
    takes_rules: bool = False
    save_formats: tuple[str, ...] = ("iapas",)


def layer_list(text: str) -> tuple[int, ...]:
    """ViT layer numbers from "6,12,18,24"."""
    try:
        return tuple(int(layer) for layer in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers such as 6,12,18,24, got {text!r}") from None


def adaclip_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=layer_list, default=(),
                        help="comma list of ViT layers, e.g. 6,12,18,24 (default: four evenly spaced)")
    parser.add_argument("--prompt-length", type=int, default=5, help="prompt tokens per layer (AdaCLIP: 5)")
    parser.add_argument("--prompt-depth", type=int, default=0,
                        help="layers of each encoder that get prompts (default: AdaCLIP's 4, fewer for a shallower CLIP)")
    parser.add_argument("--image-size", type=int, default=518, help="input size in pixels (AdaCLIP: 518)")
    parser.add_argument("--keep", choices=("last", "best"), default="last",
                        help="which epoch's prompts the run ends with: last (default) or best, by pixel F1-max on --val-dataset "
                             "(the official train.py keeps its best epoch, measured on the test set)")
    parser.add_argument("--val-dataset", default="", help="validation dataset for --keep best (a name as for --dataset)")
    parser.add_argument("--val-root", help="the root of --val-dataset")


def image_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=0,
                        help="input size in pixels (default: 518 for ViT-L/14-336, the same grid ratio for other CLIPs)")


def anomalyclip_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=layer_list, default=(),
                        help="ViT layers whose patch tokens make maps (default 6,12,18,24, or evenly spaced)")
    image_size_option(parser)


def genclip_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=layer_list, default=(), help="comma list of ViT layers (default: 6,12,18,24 for ViT-L/14)")
    parser.add_argument("--input-size", type=int, default=518, help="input pixels (GenCLIP §4.1: 518)")


TRAINERS: Registry[Trainer] = Registry("trainable method")
TRAINERS.register("adaclip")(Trainer(
    "AdaCLIP", "train AdaCLIP on auxiliary datasets (the reference: VisA + ClinicDB to test on MVTec AD, "
               "MVTec AD + ColonDB to test on VisA and the others)",
    "iapas.methods.adaclip.train:train_adaclip", "iapas.methods.adaclip.train:AdaClipArchitecture",
    epochs=5, batch_size=1, learning_rate=0.01, add_options=adaclip_options,  # caoyunkang/AdaCLIP train.py
    architecture_options=lambda a: {"layers": a.layers, "prompt_length": a.prompt_length, "prompt_depth": a.prompt_depth,
                                    "image_size": a.image_size, "save_format": a.save_format, "keep": a.keep,
                                    "val_dataset": a.val_dataset, "val_root": a.val_root},
    several_datasets=True, save_formats=("iapas", "official"),  # official: also adaclip_official.pth (its test.py's layout)
    config_options=lambda c: {"resize": c.clip_methods.adaclip_resize, "prompt_precision": c.clip_methods.adaclip_prompt_precision}))
TRAINERS.register("anomalyclip")(Trainer(
    "AnomalyCLIP", "train AnomalyCLIP's object-agnostic prompts (zqhang/AnomalyCLIP train.py defaults)",
    "iapas.methods.anomalyclip.train:train_anomalyclip", "iapas.methods.anomalyclip.train:AnomalyClipArchitecture",
    # zqhang/AnomalyCLIP train.py: --epoch 15, --batch_size 8, --learning_rate 0.001
    epochs=15, batch_size=8, learning_rate=1e-3, add_options=anomalyclip_options,
    architecture_options=lambda a: {"layers": a.layers, "image_size": a.image_size},
    takes_rules=True, save_formats=("iapas", "official")))
TRAINERS.register("genclip")(Trainer(
    "GenCLIP", "train GenCLIP's general query prompts and multi-layer vision prompts (paper B.4, §4.1 defaults)",
    "iapas.methods.genclip.train:train", "iapas.methods.genclip.train:GenClipArchitecture",
    # GenCLIP B.4: 15 epochs, Adam lr 4e-5; batch 8 is our choice (the paper gives none; AnomalyCLIP's default)
    epochs=15, batch_size=8, learning_rate=4e-5, add_options=genclip_options,
    architecture_options=lambda a: {"layers": a.layers, "input_size": a.input_size}))
TRAINERS.register("faprompt")(Trainer(
    "FAPrompt", "train FAPrompt's fine-grained abnormality prompts and prior network (paper App. B defaults)",
    "iapas.methods.faprompt.train:train_faprompt", "iapas.methods.faprompt.train:FAPromptArchitecture",
    # FAPrompt App. B: 7 epochs (its train.sh runs 15), batch 8; Sec. 4.1: Adam, lr 1e-3
    epochs=7, batch_size=8, learning_rate=1e-3, add_options=image_size_option,
    architecture_options=lambda a: {"image_size": a.image_size},
    takes_rules=True, save_formats=("iapas", "official")))


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas train <method>` for every trainable method."""
    from ..data.datasets import DATASETS

    train = commands.add_parser("train", help="train a learned comparison method")
    train_commands = train.add_subparsers(dest="train_command", required=True)
    for name in TRAINERS.names():
        trainer = TRAINERS.get(name)
        parser = train_commands.add_parser(name, help=trainer.help)
        parser.add_argument("--dataset", required=True, action="append", choices=DATASETS.names(),
                            help="an auxiliary dataset" + ("; repeat with --root for several, e.g. --dataset visa --root V "
                                                          "--dataset medical --root ClinicDB" if trainer.several_datasets else ""))
        parser.add_argument("--root", required=True, action="append", help="the root of each --dataset, in order")
        parser.add_argument("-o", "--output", required=True, help="checkpoint folder; an existing one is resumed")
        parser.add_argument("--epochs", type=int, default=trainer.epochs)
        parser.add_argument("--batch-size", type=int, default=trainer.batch_size)
        parser.add_argument("--lr", type=float, default=trainer.learning_rate)
        parser.add_argument("--seed", type=int, default=111)
        parser.add_argument("--limit", type=int, default=0, help="at most N training images")
        parser.add_argument("--clip", dest="clip_weights", help="CLIP directory or open_clip file (default: the weights dir's)")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--save-format", choices=trainer.save_formats, default="iapas",
                            help="official: the prompt file in the authors' full key layout, which their test.py loads "
                                 "(iapas reads both)" if len(trainer.save_formats) > 1 else "the prompt file's layout")
        parser.add_argument("--overwrite", action="store_true",
                            help="start over in a folder holding a run of other settings (default: refuse, naming what changed)")
        trainer.add_options(parser)
        add_model_options(parser)
        parser.set_defaults(handler=run, trainer=name)


def imported(target: str) -> Any:
    """The attribute a "module:attribute" string names."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the chosen method and report the prompt file and the last loss."""
    from ..device import resolve_device
    from ..prompt_learning import TrainOptions
    from ..weights.manifest import chosen_or_found

    from ..files import check_writable_folder

    trainer = TRAINERS.get(args.trainer)
    if len(args.dataset) != len(args.root):
        raise IapasError(f"give one --root per --dataset ({len(args.dataset)} datasets, {len(args.root)} roots)")
    if len(args.dataset) > 1 and not trainer.several_datasets:
        raise IapasError(f"{trainer.title} trains on one auxiliary dataset; got {len(args.dataset)}")
    check_writable_folder(args.output, "checkpoint folder")  # before any model loads
    if args.int8:  # add_model_options offers it; rather than ignore it silently, say why training cannot use it
        raise IapasError("--int8 is for inference (segment, eval, bench, serve): training back-propagates through the "
                         "CLIP to the prompts, and int8 layers pass no gradient back; drop --int8")
    config = base_config(args)
    clip = chosen_or_found("clip", args.clip_weights, config.weights_dir)
    sources = [(name, Path(root)) for name, root in zip(args.dataset, args.root)]
    options = TrainOptions(
        dataset="+".join(args.dataset), root=sources[0][1], out_dir=Path(args.output), clip=clip, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, limit=args.limit,
        device=str(resolve_device(config.device)), progress=not args.no_progress, save_format=args.save_format,
        sources=tuple((name, str(root)) for name, root in sources), overwrite=args.overwrite,
    )
    chosen = {**trainer.architecture_options(args), **trainer.config_options(config)}
    if trainer.takes_rules:  # the recipe's (--recipe official) rules for AnomalyCLIP and FAPrompt
        from ..prompt_learning.rules import PromptRules

        chosen["rules"] = PromptRules.from_config(config.clip_methods)
    architecture = imported(trainer.architecture)(**chosen)
    extra = {"sources": sources} if trainer.several_datasets else {}
    path, losses = imported(trainer.train)(options, architecture, **extra)
    tail = f"; last loss {losses[-1]:.4f}" if losses else " (already trained)"
    print(f"{trainer.title} prompts: {path}{tail}", file=sys.stderr)
    return EXIT_OK


