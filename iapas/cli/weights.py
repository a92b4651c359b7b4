"""`iapas weights list|verify|make-demo|convert-openclip|convert-groundingdino|to-official`: the checkpoints a user has."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ..errors import IapasError
from ..folders import default_weights_dir
from ..weights.download import DEFAULT_STALL_TIMEOUT_S  # light: urllib only
from .common import EXIT_ERROR, EXIT_OK, INPUTS_OUTPUTS, group, positive_seconds

DIR_HELP = "weights dir (default: $IAPAS_WEIGHTS, else ./weights when it holds files, else the per-user folder; `iapas weights where`)"
# method -> (converter, whether it also needs the CLIP the prompts were trained on); imported when run
OFFICIAL_CONVERTERS = {
    "adaclip": ("iapas.methods.adaclip.checkpoint:to_official", False),  # caoyunkang/AdaCLIP method/trainer.py save/load
    # zqhang/AnomalyCLIP and mala-lab/FAPrompt: the prompt learner's whole state dict, frozen embeddings included
    "anomalyclip": ("iapas.weights.official:to_official", True),
    "faprompt": ("iapas.weights.official:to_official", True),
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas weights` and its sub-commands."""
    weights = commands.add_parser("weights", help="list, verify or build model weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    where = weights_commands.add_parser("where", help="print the weights dir commands use when --weights is not given")
    where.set_defaults(handler=run_where)
    listing = weights_commands.add_parser("list", help="the checkpoints iapas knows and which are present")
    group(listing, INPUTS_OUTPUTS).add_argument("dir", nargs="?", help=DIR_HELP)
    listing.set_defaults(handler=run_list)
    verify = weights_commands.add_parser("verify", help="check sizes and sha256 of the checkpoints in DIR")
    group(verify, INPUTS_OUTPUTS).add_argument("dir", nargs="?", help=DIR_HELP)
    group(verify, INPUTS_OUTPUTS).add_argument("--no-hash", action="store_true", help="check presence and size only")
    verify.set_defaults(handler=run_verify)
    convert = weights_commands.add_parser("convert-openclip", help="turn an open_clip checkpoint into a transformers CLIP directory")
    io = group(convert, INPUTS_OUTPUTS)
    io.add_argument("checkpoint", help="open_clip .pt/.bin/.safetensors state dict (e.g. ViT-B-16-plus-240)")
    io.add_argument("-o", "--output", required=True, help="the transformers CLIP directory to write")
    io.add_argument("--tokenizer", help="a transformers CLIP directory to take the tokenizer from (default: open_clip's BPE)")
    io.add_argument("--head-width", type=int, default=64, help="attention head width of both towers (64 in every "
                    "open_clip and OpenAI ViT)")
    io.add_argument("--vision-head-width", type=int, help="the vision tower's head width (default: --head-width)")
    io.add_argument("--text-head-width", type=int, help="the text tower's head width (default: --head-width)")
    io.add_argument("--activation", choices=("auto", "gelu", "quick_gelu"), default="auto",
                    help="auto: quick_gelu for OpenAI's files (a TorchScript archive or its state dict), gelu for open_clip's")
    convert.set_defaults(handler=run_convert_openclip)
    fetch = weights_commands.add_parser("download", help="fetch checkpoints (hub or URL), sha256-checked, into the weights dir")
    io = group(fetch, INPUTS_OUTPUTS)
    io.add_argument("names", nargs="*", help="manifest entries to fetch (default: those of --profile)")
    io.add_argument("--profile", choices=("default", "official", "fast", "all"),
                    help="default: Grounding DINO-T + SAM ViT-B; official: the authors' files; all: everything")
    io.add_argument("--weights", dest="dir", help=DIR_HELP)
    io.add_argument("--cache-dir", help="huggingface_hub cache (default: its own, HF_HOME)")
    io.add_argument("--stall-timeout", type=positive_seconds, default=DEFAULT_STALL_TIMEOUT_S, metavar="SECONDS",
                    help="end a file when the server sends (almost) nothing for this long; a re-run resumes it "
                         f"(default {DEFAULT_STALL_TIMEOUT_S:g})")
    fetch.set_defaults(handler=run_download, needs_network=True)
    gdino = weights_commands.add_parser(
        "convert-groundingdino", help="turn an original Grounding DINO .pth into a transformers Grounding DINO directory"
    )
    io = group(gdino, INPUTS_OUTPUTS)
    io.add_argument("checkpoint", help="groundingdino_swint_ogc.pth or groundingdino_swinb_cogcoor.pth (IDEA-Research)")
    io.add_argument("--bert", required=True, help="a bert-base-uncased directory (config.json, vocab.txt): the text side")
    io.add_argument("-o", "--output", required=True, help="the transformers Grounding DINO directory to write")
    gdino.set_defaults(handler=run_convert_groundingdino)
    official = weights_commands.add_parser(
        "to-official", help="write an iapas checkpoint of a learned method in the layout its authors' code loads")
    io = group(official, INPUTS_OUTPUTS)
    io.add_argument("method", choices=sorted(OFFICIAL_CONVERTERS), help="the learned method whose checkpoint it is")
    io.add_argument("checkpoint", help="a checkpoint from `iapas train METHOD`")
    io.add_argument("-o", "--output", required=True, help="the file to write (e.g. adaclip_official.pth, epoch_15.pth)")
    io.add_argument("--clip", help="AnomalyCLIP / FAPrompt: the CLIP the prompts were trained on (default: the weights dir's)")
    io.add_argument("--weights", dest="dir", help=DIR_HELP)
    official.set_defaults(handler=run_to_official)
    demo = weights_commands.add_parser("make-demo", help="build tiny RANDOM models (meaningless output) for demos")
    group(demo, INPUTS_OUTPUTS).add_argument("dir", nargs="?", help=DIR_HELP)
    demo.set_defaults(handler=run_make_demo)


def weights_dir_of(args: argparse.Namespace) -> Path:
    """The folder the command reads or writes: the one given, else the default (iapas/folders.py)."""
    return Path(args.dir) if args.dir else default_weights_dir()


def run_where(args: argparse.Namespace) -> int:
    """Print the default weights dir, and on stderr how it was found."""
    from ..folders import weights_search

    print(default_weights_dir())
    print("looked at: " + "; ".join(f"{what} ({path})" if path else what for path, what in weights_search()), file=sys.stderr)
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Print the manifest with what is present in the weights dir."""
    from rich.console import Console
    from rich.table import Table

    from ..weights.manifest import is_present, load_manifest

    weights_dir = weights_dir_of(args)
    table = Table(title=f"weights known to iapas (dir: {weights_dir})")
    for column in ("name", "role", "format", "expected path", "size", "present", "source"):
        table.add_column(column, overflow="fold")
    for entry in load_manifest():
        size = f"{entry.size / 1e6:.0f} MB" if entry.size else "-"
        present = "yes" if is_present(entry, weights_dir) else "no"
        table.add_row(entry.name, entry.role, entry.format, entry.expected_path, size, present, entry.source)
    Console(width=200).print(table)
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    """Check sizes and hashes; exit 2 when a checkpoint is wrong or none is there."""
    from rich.console import Console
    from rich.table import Table

    from ..weights.manifest import load_manifest, verify_entry

    weights_dir = weights_dir_of(args)
    if not weights_dir.is_dir():
        raise IapasError(f"weights dir not found: {weights_dir}")
    results = [verify_entry(entry, weights_dir, check_hash=not args.no_hash) for entry in load_manifest()]
    table = Table(title=f"verification of {weights_dir}")
    for column in ("name", "status", "detail"):
        table.add_column(column)
    for result in results:
        style = "green" if result.ok else ("dim" if result.status == "missing" else "red")
        table.add_row(result.entry.name, f"[{style}]{result.status}[/{style}]", result.detail)
    Console(width=160).print(table)
    bad = [r for r in results if r.status not in ("ok", "present", "missing")]
    if bad:
        print(f"iapas: error: {len(bad)} checkpoint(s) failed verification: {', '.join(r.entry.name for r in bad)}", file=sys.stderr)
        return EXIT_ERROR
    if not any(r.ok for r in results):
        print(f"iapas: error: no known checkpoint found in {weights_dir}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def run_make_demo(args: argparse.Namespace) -> int:
    """Build the tiny random demo models, warning that their output is meaningless."""
    from ..weights.demo import make_demo_weights

    weights_dir = weights_dir_of(args)
    for path in make_demo_weights(weights_dir):
        print(f"wrote {path}")
    print(f"demo weights are in {weights_dir}", file=sys.stderr)
    print("WARNING: these are RANDOM demo weights: anything segmented with them is meaningless.", file=sys.stderr)
    return EXIT_OK


def run_convert_openclip(args: argparse.Namespace) -> int:
    """Convert an open_clip checkpoint into a transformers CLIP directory."""
    from ..backends.openclip_convert import convert_openclip_checkpoint

    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    heads = tuple(args.head_width if width is None else width for width in (args.vision_head_width, args.text_head_width))
    out = convert_openclip_checkpoint(Path(args.checkpoint), Path(args.output), tokenizer, heads, args.activation)
    print(f"wrote a transformers CLIP directory: {out}")
    return EXIT_OK


def run_download(args: argparse.Namespace) -> int:
    """Fetch the chosen entries; exit 0 when all are there, 1 when some failed, 2 when none could be had."""
    from tqdm import tqdm

    from ..weights.download import download
    from .common import EXIT_PARTIAL

    bars: dict[str, tqdm] = {}

    def progress_for(name: str):
        for bar in bars.values():  # the previous entry's bar ends where the next entry begins
            bar.close()
        bars.clear()

        def update(done: int, total: int) -> None:
            if name not in bars:
                bars[name] = tqdm(total=total or None, unit="B", unit_scale=True, desc=name, leave=False)
            bar = bars[name]
            if total and bar.total != total:  # an entry of several files: one bar per file, in turn
                bar.reset(total)
            bar.update(done - bar.n)
        return update

    def report(line: str) -> None:
        for bar in bars.values():  # a finished or failed entry's bar goes before its message
            bar.close()
        bars.clear()
        print(line, file=sys.stderr)

    weights_dir = weights_dir_of(args)
    print(f"weights dir: {weights_dir}", file=sys.stderr)
    outcomes = download(args.names, args.profile, weights_dir, args.cache_dir, report=report,
                        progress_factory=progress_for, stall_timeout=args.stall_timeout)
    for bar in bars.values():
        bar.close()
    for outcome in outcomes:
        if outcome.status != "failed":
            print(f"{outcome.entry}: {outcome.status} ({outcome.detail})", file=sys.stderr)
    failed = sum(outcome.status == "failed" for outcome in outcomes)
    print(f"{len(outcomes)} entries: {len(outcomes) - failed} in place, {failed} failed", file=sys.stderr)
    if failed == len(outcomes):
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else EXIT_OK


def run_convert_groundingdino(args: argparse.Namespace) -> int:
    """Convert an original Grounding DINO checkpoint into a transformers Grounding DINO directory."""
    from ..backends.groundingdino_convert import convert_groundingdino_checkpoint

    out = convert_groundingdino_checkpoint(Path(args.checkpoint), Path(args.bert), Path(args.output))
    print(f"wrote a transformers Grounding DINO directory: {out}")
    return EXIT_OK


def run_to_official(args: argparse.Namespace) -> int:
    """Convert an iapas checkpoint into its method's official layout."""
    from .train import imported

    target, needs_clip = OFFICIAL_CONVERTERS[args.method]
    if needs_clip:
        from ..weights.manifest import chosen_or_found
        from ..weights.official import checkpoint_record

        held = checkpoint_record(Path(args.checkpoint))["method"]
        if held != args.method:
            raise IapasError(f"{args.checkpoint} holds {held} prompts, not {args.method}")
        clip = chosen_or_found("clip", args.clip or "", weights_dir_of(args))
        out = imported(target)(Path(args.checkpoint), clip, Path(args.output))
    else:
        out = imported(target)(Path(args.checkpoint), Path(args.output))
    print(f"wrote an official {args.method} checkpoint: {out}")
    return EXIT_OK
