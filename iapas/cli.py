"""The `iapas` command: a thin layer over the Python API; every IapasError becomes one line."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table

from .config import Config, load_config
from .device import DEVICE_CHOICES
from .errors import IapasError

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
Command = Callable[[argparse.Namespace], int]


def base_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with the command-line options laid over it."""
    config = load_config(args.config) if getattr(args, "config", None) else Config()
    return config.updated(
        {
            "weights_dir": getattr(args, "weights", None),
            "device": getattr(args, "device", None),
            "detection.weights": getattr(args, "detector", None),
            "masking.weights": getattr(args, "segmenter", None),
            "detection.box_threshold": getattr(args, "box_threshold", None),
            "detection.text_threshold": getattr(args, "text_threshold", None),
            "filtering.nms_iou": getattr(args, "nms_iou", None),
            "filtering.size_threshold": getattr(args, "size_threshold", None),
            "calibration.seed": getattr(args, "seed", None),
            "calibration.n_images": getattr(args, "n_images", None),
            "calibration.tagger": getattr(args, "tagger", None),
            "calibration.tagger_weights": getattr(args, "tagger_weights", None),
            "calibration.tags": getattr(args, "tags", None),
            "calibration.llm": getattr(args, "llm", None),
            "calibration.llm_model": getattr(args, "llm_model", None),
            "calibration.llm_url": getattr(args, "llm_url", None),
            "calibration.template": getattr(args, "template", None),
            "calibration.cache_dir": getattr(args, "cache_dir", None),
            "clip_methods.weights": getattr(args, "clip_weights", None),
            "clip_methods.adaclip_prompts": getattr(args, "adaclip_prompts", None),
        }
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML, TOML or JSON config file (see `iapas config show`)")
    parser.add_argument("--weights", help="weights dir laid out as weights/manifest.toml says (default: weights)")
    parser.add_argument("--detector", help="Grounding DINO directory (overrides the weights dir)")
    parser.add_argument("--segmenter", help="SAM .pth file or SamModel directory (overrides the weights dir)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, help="default: auto (GPU when there is one)")


def command_segment(args: argparse.Namespace) -> int:
    from .batch import run_batch
    from .images import collect_inputs
    from .pipeline import Pipeline

    inputs = collect_inputs(args.inputs)  # bad paths fail here, before any model loads
    config = base_config(args)
    if args.method == "iapas":
        options: dict = {}
        if args.prompt:
            options["prompts"] = args.prompt
        if args.calibration:
            options["calibration"] = calibration_with_overrides(args)
        pipeline = Pipeline.from_config(config)
        if args.no_size_filter:
            pipeline.graph = pipeline.graph.without("size_filter")
        segment = lambda pixels: pipeline.segment(pixels, **options)  # noqa: E731
        extra = {"calibration": str(args.calibration)} if args.calibration else None
    else:
        from .methods import METHODS

        method = METHODS.get(args.method)(config, ())
        method.prepare(args.category or "object", [], "object", Path(args.output))
        segment, extra = method.segment, {"category": args.category or "object"}
    summary = run_batch(segment, inputs, Path(args.output), overwrite=args.overwrite, max_pixels=config.max_image_pixels,
                        progress=not args.no_progress, extra_record=extra)
    print(summary.line(), file=sys.stderr)
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def calibration_with_overrides(args: argparse.Namespace):
    """The calibration file, with any threshold given on the command line taking precedence."""
    import dataclasses

    from .calibration import load_calibration

    calibration = load_calibration(args.calibration)
    overrides = {
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold,
        "size_threshold": args.size_threshold,
    }
    return dataclasses.replace(calibration, **{k: v for k, v in overrides.items() if v is not None})


def command_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibration_table, load_calibration

    console = Console(width=160)
    if args.show:
        console.print(calibration_table(load_calibration(args.show), title=str(args.show)))
        return EXIT_OK
    if not args.normal_dir:
        raise IapasError("calibrate needs NORMAL_DIR (or --show FILE)")
    from .images import find_images
    from .pipeline import Pipeline

    if not Path(args.normal_dir).is_dir():
        raise IapasError(f"normal-image folder not found: {args.normal_dir}")
    if not find_images(args.normal_dir):
        raise IapasError(f"no images found in folder: {args.normal_dir}")
    ablate = [name.strip() for name in (args.ablate or "").split(",") if name.strip()]
    pipeline = Pipeline.from_config(base_config(args))
    calibration = pipeline.calibrate(args.normal_dir, args.anomalous_dir, args.category, args.kind, ablate)
    path = calibration.save(args.output)
    console.print(calibration_table(calibration, title=str(path)))
    return EXIT_OK


def command_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalOptions, run_eval
    from .reports import paper_comparison

    options = EvalOptions(
        dataset=args.dataset, root=Path(args.root), out_dir=Path(args.output), method=args.method,
        categories=args.categories or (), ablate=[a.strip() for a in (args.ablate or "").split(",") if a.strip()],
        save_maps=args.save_maps, image_score=args.image_score, progress=not args.no_progress, limit=args.limit,
    )
    run_dir = run_eval(options, base_config(args))
    print((run_dir / "table.md").read_text(encoding="utf-8"))
    if args.compare_paper:
        comparison = paper_comparison(args.dataset, run_dir)
        print(comparison or f"the paper's Table 1 has no {args.dataset} row")
    print(f"results: {run_dir}", file=sys.stderr)
    return EXIT_OK


def command_data_synth(args: argparse.Namespace) -> int:
    from .data.synth import SURFACES, SynthSpec, write_synth_dataset

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


def command_train_adaclip(args: argparse.Namespace) -> int:
    from .baselines.adaclip_train import TrainOptions, train_adaclip
    from .device import resolve_device
    from .weights import find_weights

    config = base_config(args)
    clip = Path(args.clip_weights) if args.clip_weights else find_weights("clip", config.weights_dir)[1]
    layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else ()
    options = TrainOptions(
        dataset=args.dataset, root=Path(args.root), out_dir=Path(args.output), clip=clip, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, layers=layers, limit=args.limit,
        device=str(resolve_device(config.device)), progress=not args.no_progress,
    )
    path, losses = train_adaclip(options)
    tail = f"; last loss {losses[-1]:.4f}" if losses else " (already trained)"
    print(f"AdaCLIP prompts: {path}{tail}", file=sys.stderr)
    return EXIT_OK


def command_weights_list(args: argparse.Namespace) -> int:
    from .weights import is_present, load_manifest

    table = Table(title=f"weights known to iapas (dir: {args.dir})")
    for column in ("name", "role", "format", "expected path", "size", "present", "source"):
        table.add_column(column, overflow="fold")
    for entry in load_manifest():
        size = f"{entry.size / 1e6:.0f} MB" if entry.size else "-"
        present = "yes" if is_present(entry, Path(args.dir)) else "no"
        table.add_row(entry.name, entry.role, entry.format, entry.expected_path, size, present, entry.source)
    Console(width=200).print(table)
    return EXIT_OK


def command_weights_verify(args: argparse.Namespace) -> int:
    from .weights import load_manifest, verify_entry

    weights_dir = Path(args.dir)
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


def command_weights_make_demo(args: argparse.Namespace) -> int:
    from .demo_weights import make_demo_weights

    for path in make_demo_weights(Path(args.dir)):
        print(f"wrote {path}")
    print("WARNING: these are RANDOM demo weights: anything segmented with them is meaningless.", file=sys.stderr)
    return EXIT_OK


def command_weights_convert_openclip(args: argparse.Namespace) -> int:
    from .backends.openclip_convert import convert_openclip_checkpoint

    out = convert_openclip_checkpoint(Path(args.checkpoint), Path(args.output), Path(args.tokenizer) if args.tokenizer else None,
                                      args.head_width, args.activation)
    print(f"wrote a transformers CLIP directory: {out}")
    return EXIT_OK


def command_config_show(args: argparse.Namespace) -> int:
    print(base_config(args).to_yaml(), end="")
    return EXIT_OK


def command_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args, base_config(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iapas", description="Training-free zero-shot industrial anomaly segmentation (IAP-AS).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment images or folders of images")
    segment.add_argument("inputs", nargs="+", help="image files and/or folders (png, jpg, bmp, tif)")
    segment.add_argument("-o", "--output", default="iapas-out", help="output folder (default: iapas-out)")
    segment.add_argument("--prompt", action="append", help="text prompt; repeat for several (default: abnormal, defect)")
    segment.add_argument("--method", default="iapas", help="iapas (default), winclip or adaclip")
    segment.add_argument("--category", help="class name for the CLIP methods' prompts (default: object)")
    segment.add_argument("--clip", dest="clip_weights", help="CLIP directory for --method winclip/adaclip")
    segment.add_argument("--adaclip-prompts", help="trained AdaCLIP prompts (from `iapas train adaclip`)")
    segment.add_argument("--calibration", help="calibration file from `iapas calibrate` (P_final, S_threshold, thresholds)")
    segment.add_argument("--box-threshold", type=float, help="default 0.2 (paper, objects; 0.1 for textures)")
    segment.add_argument("--text-threshold", type=float, help="default 0.2 (paper, objects; 0.1 for textures)")
    segment.add_argument("--nms-iou", type=float, help="default 0.5 (paper)")
    segment.add_argument("--size-threshold", type=float, help="box area / image area cap, default 0.8 (paper)")
    segment.add_argument("--no-size-filter", action="store_true", help="skip step 2-2's size filter (ablation)")
    segment.add_argument("--overwrite", action="store_true", help="redo images whose results already exist")
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(segment)
    segment.set_defaults(handler=command_segment)

    calibrate = commands.add_parser("calibrate", help="preprocessing: tags, size threshold and LLM prompts -> calibration file")
    calibrate.add_argument("normal_dir", nargs="?", help="folder of normal images")
    calibrate.add_argument("--show", metavar="FILE", help="print a calibration file as a table and exit")
    calibrate.add_argument("--anomalous-dir", help="images for the size threshold (default: the chosen normal images)")
    calibrate.add_argument("--category", help="category name (fixed tag when there is no tagger; texture categories set --kind)")
    calibrate.add_argument("--kind", choices=("object", "texture"), help="box/text thresholds 0.2 (object) or 0.1 (texture)")
    calibrate.add_argument("-o", "--output", default="calib.json")
    calibrate.add_argument("--seed", type=int, help="random seed for choosing images (default 111, the paper's)")
    calibrate.add_argument("--n-images", type=int, help="normal images to tag (default 3)")
    calibrate.add_argument("--tagger", help="auto | clip | ram | fixed (default auto)")
    calibrate.add_argument("--tagger-weights", help="the tagger's own weights (RAM checkpoint, or a CLIP other than --clip)")
    calibrate.add_argument("--clip", dest="clip_weights", help="CLIP directory (the clip tagger; default: the weights dir's)")
    calibrate.add_argument("--tags", nargs="+", help="fixed tags (the fixed tagger)")
    calibrate.add_argument("--llm", help="lexicon | gguf | hf | openai (default lexicon, offline)")
    calibrate.add_argument("--llm-model", help=".gguf file, transformers directory, or the endpoint's model name")
    calibrate.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1")
    calibrate.add_argument("--template", help="prompt template name or .txt path (default iap_v1)")
    calibrate.add_argument("--cache-dir", help="LLM answer cache (default ~/.cache/iapas/llm)")
    calibrate.add_argument("--ablate", help="comma list of preprocessing steps to skip: tagging,llm")
    add_model_options(calibrate)
    calibrate.set_defaults(handler=command_calibrate)

    from .data.datasets import DATASETS
    from .methods import METHODS

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
    evaluate.add_argument("--tagger", help="auto | clip | ram | fixed")
    evaluate.add_argument("--tagger-weights", help="RAM checkpoint, or a CLIP other than --clip for tagging")
    evaluate.add_argument("--llm", help="lexicon | gguf | hf | openai")
    evaluate.add_argument("--llm-model")
    evaluate.add_argument("--llm-url")
    evaluate.add_argument("--seed", type=int)
    evaluate.add_argument("--cache-dir", help="LLM answer cache (default ~/.cache/iapas/llm)")
    add_model_options(evaluate)
    evaluate.set_defaults(handler=command_eval)

    evaluate.add_argument("--clip", dest="clip_weights", help="CLIP directory (tagger, winclip, adaclip)")
    evaluate.add_argument("--adaclip-prompts", help="trained AdaCLIP prompts")

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
    adaclip.add_argument("--layers", help="comma list of ViT layers, e.g. 6,12,18,24 (default: four evenly spaced)")
    adaclip.add_argument("--limit", type=int, default=0, help="at most N training images")
    adaclip.add_argument("--clip", dest="clip_weights", help="CLIP directory (default: the weights dir's)")
    adaclip.add_argument("--no-progress", action="store_true")
    add_model_options(adaclip)
    adaclip.set_defaults(handler=command_train_adaclip)

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
    synth.set_defaults(handler=command_data_synth)

    weights = commands.add_parser("weights", help="list, verify or build model weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    listing = weights_commands.add_parser("list", help="the checkpoints iapas knows and which are present")
    listing.add_argument("dir", nargs="?", default="weights")
    listing.set_defaults(handler=command_weights_list)
    verify = weights_commands.add_parser("verify", help="check sizes and sha256 of the checkpoints in DIR")
    verify.add_argument("dir", nargs="?", default="weights")
    verify.add_argument("--no-hash", action="store_true", help="check presence and size only")
    verify.set_defaults(handler=command_weights_verify)
    convert = weights_commands.add_parser("convert-openclip", help="turn an open_clip checkpoint into a transformers CLIP directory")
    convert.add_argument("checkpoint", help="open_clip .pt/.bin/.safetensors state dict (e.g. ViT-B-16-plus-240)")
    convert.add_argument("-o", "--output", required=True)
    convert.add_argument("--tokenizer", help="a transformers CLIP directory to take the tokenizer from (default: open_clip's BPE)")
    convert.add_argument("--head-width", type=int, default=64, help="attention head width (64 in every open_clip ViT)")
    convert.add_argument("--activation", choices=("gelu", "quick_gelu"), default="gelu", help="quick_gelu for OpenAI weights")
    convert.set_defaults(handler=command_weights_convert_openclip)
    demo = weights_commands.add_parser("make-demo", help="build tiny RANDOM models (meaningless output) for demos")
    demo.add_argument("dir", nargs="?", default="weights")
    demo.set_defaults(handler=command_weights_make_demo)

    config = commands.add_parser("config", help="show the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective configuration as YAML")
    add_model_options(show)
    show.set_defaults(handler=command_config_show)

    bench = commands.add_parser("bench", help="time each stage on an image")
    bench.add_argument("image", help="image file to segment repeatedly")
    bench.add_argument("--repeat", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--prompt", action="append")
    add_model_options(bench)
    bench.set_defaults(handler=command_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: every model loads from a local path
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except IapasError as error:
        print(f"iapas: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("iapas: interrupted; finished results are kept and a re-run resumes", file=sys.stderr)
        return 130
    except Exception as error:  # one line, never a traceback, unless asked for
        if args.debug:
            raise
        message = str(error).splitlines()[0] if str(error) else ""
        print(f"iapas: internal error: {type(error).__name__}: {message} (re-run with --debug for details)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
