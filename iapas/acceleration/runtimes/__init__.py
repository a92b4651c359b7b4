"""Exported image encoders (ONNX, OpenVINO IR) and the runtimes that run them in place of torch.

`iapas export --format onnx|openvino` writes each loaded backend's image encoder (see `parts.py`) to a
file; `--runtime onnx|openvino` on `segment` and `bench` (config `masking.runtime`, `detection.runtime`)
runs that file instead of the torch encoder, everything else unchanged. The file lives beside the weights,
named `<weights name>.<part>.<H>x<W><suffix>` (e.g. `sam_vit_b_01ec64.pth.sam-image-encoder.1024x1024.onnx`),
or under ~/.cache/iapas/exported when that folder is read-only; a missing one is exported on first use,
with a note. A `.json` beside it records which weights it came from, so replaced weights are re-exported.

Example:
    >>> from iapas.acceleration.runtimes import use_runtime
    >>> use_runtime(segmenter, "onnx", Path("weights/sam_vit_b_01ec64.pth"), torch.device("cpu"))

See Also:
    iapas/cli/export.py: the `iapas export` command; tests/test_export.py: the agreement with torch.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ...errors import ConfigError
from ...files import atomic_write_text, exclusive
from ...registry import Registry
from .formats import FORMATS, Format, Runner
from .parts import PARTS, EncoderPart, Shape, parts_of

DEFAULT_RUNTIME = "torch"
EXPORT_IMAGE_SIZE = 1024  # the image side `iapas export` prepares the detector for (SAM's encoder input is its own 1024)


@dataclass(frozen=True)
class Runtime:
    """A way to run the image encoders: torch itself, or an exported file format."""

    name: str
    format: str | None  # None: the torch modules as loaded


RUNTIMES: Registry[Runtime] = Registry("runtime")
RUNTIMES.register("torch")(Runtime("torch", None))
RUNTIMES.register("onnx")(Runtime("onnx", "onnx"))
RUNTIMES.register("openvino")(Runtime("openvino", "openvino"))


RUNTIME_METHODS = ("iapas",)  # the methods whose image encoders are exported (parts.py): Grounding DINO's backbone, SAM's encoder


def check_method_runtimes(method: str, config: Any) -> None:
    """Refuse, in one line, a runtime other than torch for a method whose encoders are not exported (the CLIP methods).

    The CLIP methods read several intermediate layers through their own attention paths and prompted tokens,
    so no single exported image-to-embedding graph can stand in for their encoder; rather than ignore the
    option silently, it is refused before any model loads.
    """
    if method in RUNTIME_METHODS:
        return
    masking, detection = config.masking.runtime, config.detection.runtime
    chosen = [f"--runtime {masking}"] if masking != DEFAULT_RUNTIME else []
    if detection not in (DEFAULT_RUNTIME, masking):
        chosen.append(f"--detector-runtime {detection}")
    if chosen:
        raise ConfigError(f"{' and '.join(chosen)} applies to IAP-AS's exported image encoders (Grounding DINO, SAM), "
                          f"not to --method {method}, whose CLIP runs in torch (config masking.runtime, detection.runtime)")


def exported_format(name: str) -> Format:
    """The format registered as `name`, or a one-line error when it is unknown or its package is missing."""
    fmt = FORMATS.get(name)
    if importlib.util.find_spec(fmt.package) is None:
        raise ConfigError(f"the {name} format needs the {fmt.package} package: pip install 'iapas[export]'")
    return fmt


def cache_root() -> Path:
    """~/.cache/iapas/exported (IAPAS_CACHE overrides ~/.cache/iapas): where exports go when the weights' folder is read-only."""
    return Path(os.environ.get("IAPAS_CACHE", Path.home() / ".cache" / "iapas")) / "exported"


def file_name(weights: Path, part: EncoderPart, shapes: Sequence[Shape], fmt: Format) -> str:
    """`<weights name>.<part>.<H>x<W><suffix>`: the first input's spatial size names the export."""
    height, width = shapes[0][-2:]
    return f"{weights.name}.{part.name}.{height}x{width}{fmt.suffix}"


def locations(weights: Path, part: EncoderPart, shapes: Sequence[Shape], fmt: Format) -> list[Path]:
    """Where an export of these weights is looked for, in order: beside the weights, then the cache."""
    name = file_name(weights, part, shapes, fmt)
    key = hashlib.sha256(str(weights.resolve()).encode()).hexdigest()[:16]
    return [weights.parent / name, cache_root() / key / name]


def source_identity(weights: Path) -> dict[str, Any]:
    """Size and modification time of the weights (file or folder): what says an export is still theirs."""
    from ...runs.fingerprint import path_identity

    identity = dict(path_identity(weights) or {})
    identity.pop("path", None)
    return identity


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def is_current(path: Path, weights: Path) -> bool:
    """An export is current when it exists and its record (if any: a copied file has none) names these weights."""
    if not path.is_file():
        return False
    record = record_path(path)
    if not record.is_file():
        return True
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("source") == source_identity(weights)
    except ValueError:
        return False


def export_part(backend: Any, part: EncoderPart, fmt: Format, weights: Path, shapes: Sequence[Shape], path: Path,
                module: torch.nn.Module | None = None) -> Path:
    """Write the part's torch encoder (or `module`, kept from before a runtime replaced it) to `path`, and its record."""
    module = module if module is not None else part.module(backend)
    signature = part.signature(backend, tuple(shapes))
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    examples = [example.to(device) for example in part.examples(signature)]
    fmt.export(module, examples, signature, path)
    record = {"source": source_identity(weights), "weights": str(weights), "part": part.name, "format": fmt.name,
              "inputs": {name: list(shape) for name, shape in signature.inputs}, "torch": torch.__version__}
    atomic_write_text(record_path(path), json.dumps(record, indent=2) + "\n")
    return path


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def runner_for(backend: Any, part: EncoderPart, fmt: Format, weights: Path, device: torch.device):
    """A function of input shapes returning a Runner: the current export if there is one, else one made now (with a note)."""
    module = part.module(backend)  # the torch encoder, kept before the runtime takes its place

    def make(shapes: tuple[Shape, ...]) -> Runner:
        candidates = locations(weights, part, shapes, fmt)
        path = next((c for c in candidates if is_current(c, weights)), None)
        if path is None:
            path = candidates[0] if _writable(weights.parent) else candidates[1]
            with exclusive(path):  # two runs exporting one encoder at once: one exports, the other waits and reuses it
                if not is_current(path, weights):
                    print(f"iapas: exporting {part.name} of {weights} to {path} (once; later runs reuse it)", file=sys.stderr)
                    export_part(backend, part, fmt, weights, shapes, path, module)
        return fmt.load(path, part.signature(backend, shapes), device)

    return make


def use_runtime(backend: Any, runtime: str, weights: str | Path, device: torch.device) -> Any:
    """Run the backend's image encoders with `runtime` (torch: leave it as loaded); returns the backend."""
    chosen = RUNTIMES.get(runtime)
    if chosen.format is None:
        return backend
    parts = parts_of(backend)
    if not parts:  # silently running torch under --runtime onnx would mislead a benchmark
        known = ", ".join(PARTS.names())
        raise ConfigError(f"--runtime {runtime} has no exported encoder for {type(backend).__name__} (exported parts: {known}); "
                          "use --runtime torch for it")
    fmt = exported_format(chosen.format)
    weights = Path(weights)
    for part in parts:
        part.install(backend, runner_for(backend, part, fmt, weights, device))
    return backend


def export_backend(backend: Any, format_name: str, weights: str | Path, out_dir: str | Path | None = None,
                   image_size: int = EXPORT_IMAGE_SIZE) -> list[Path]:
    """Export every image encoder of a loaded backend; files go to `out_dir`, else beside the weights."""
    fmt = exported_format(format_name)
    weights = Path(weights)
    written = []
    for part in parts_of(backend):
        shapes = part.shapes(backend, image_size)
        path = Path(out_dir) / file_name(weights, part, shapes, fmt) if out_dir else (
            locations(weights, part, shapes, fmt)[0 if _writable(weights.parent) else 1])
        with exclusive(path):
            written.append(export_part(backend, part, fmt, weights, shapes, path))
    return written


__all__ = ["DEFAULT_RUNTIME", "FORMATS", "PARTS", "RUNTIMES", "RUNTIME_METHODS", "check_method_runtimes", "export_backend",
           "parts_of", "use_runtime"]
