"""`iapas export`: write the image encoders as ONNX or OpenVINO IR, and the `--runtime` option that runs them."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, add_model_options, base_config

# the models `--part` can name -> (config role, config section holding its backend and weights)
EXPORT_ROLES = {"segmenter": "masking", "detector": "detection"}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas export`."""
    export = commands.add_parser("export", help="export the image encoders to ONNX or OpenVINO IR for --runtime")
    export.add_argument("--format", dest="export_format", required=True, help="onnx or openvino")
    export.add_argument("-o", "--output", help="folder for the files (default: beside the weights, where --runtime finds them)")
    export.add_argument("--part", default="all", choices=("all", *EXPORT_ROLES),
                        help="which model's encoder: the SAM segmenter, the Grounding DINO detector, or all (default)")
    export.add_argument("--image-size", type=int, default=1024,
                        help="side of the square images the detector will see; its input size follows (default 1024)")
    add_model_options(export)
    export.set_defaults(handler=run)


class _BothRuntimes(argparse.Action):
    """`--runtime X` sets the segmenter's runtime and, unless --detector-runtime says otherwise, the detector's."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.runtime = values
        if getattr(namespace, "detector_runtime", None) is None:
            namespace.detector_runtime = values


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """`--runtime` and `--detector-runtime` (segment and bench)."""
    from ..acceleration.runtimes import RUNTIMES

    names = RUNTIMES.names()
    parser.add_argument("--runtime", choices=names, action=_BothRuntimes,
                        help="run the image encoders with torch (default), onnx or openvino; exported on first use "
                             "(see `iapas export`)")
    parser.add_argument("--detector-runtime", choices=names, help="the detector's runtime alone (default: --runtime)")


def run(args: argparse.Namespace) -> int:
    """Load each chosen model on the CPU and write its image encoders; print the files written."""
    import torch

    from ..backends import load_detector, load_segmenter
    from ..acceleration.runtimes import export_backend, exported_format
    from ..weights.manifest import chosen_or_found

    from ..files import check_writable_folder

    exported_format(args.export_format)  # an unknown format or a missing package fails before any model loads
    if args.output:
        check_writable_folder(args.output, "export folder")  # a file named by -o fails before any model loads too
    config = base_config(args)
    loaders = {"segmenter": load_segmenter, "detector": load_detector}
    roles = list(EXPORT_ROLES) if args.part == "all" else [args.part]
    written = []
    for role in roles:
        section = getattr(config, EXPORT_ROLES[role])
        path = chosen_or_found(role, section.weights, config.weights_dir)
        backend = loaders[role](section.backend, path, torch.device("cpu"))  # ONNX and IR files are device-free
        written += export_backend(backend, args.export_format, path, Path(args.output) if args.output else None,
                                  args.image_size)
    for path in written:
        print(path)
    return EXIT_OK
