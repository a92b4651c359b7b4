"""Fingerprints of what defines a run's results, kept beside them so results are reused only when nothing changed.

A fingerprint is a plain dict built by a table of fields (`SEGMENT_FIELDS`, `EVAL_FIELDS`): each entry
maps a name to a function of the run (`RunSpec`), so a new field that defines results (a recipe name, a
protocol) is one more line in a table. The folder keeps the dict in `iapas-fingerprint.json`; every
result file also carries its digest, so a result made under other settings is never counted as done,
even in a folder whose fingerprint was replaced by an `--overwrite` run that was interrupted.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from ..config import Config

FINGERPRINT_FILE = "iapas-fingerprint.json"
FINGERPRINT_VERSION = 1  # bump when the meaning of a field changes: old folders then read as "changed"
# Config keys that do not change a result (where and how fast it is computed), or that name a model file,
# whose identity is in the "models" field instead of its path.
NOT_DEFINING = frozenset({
    "weights_dir", "device", "max_image_pixels", "calibration.cache_dir", "detection.weights", "masking.weights",
    "calibration.tagger_weights", "clip_methods.weights", "clip_methods.adaclip_prompts", "threads",
    "batch_size",  # batched results equal one-by-one ones (tests/test_batching.py)
})


@dataclass(frozen=True)
class RunSpec:
    """A run as its fingerprint sees it: the config, the method and the command's result-defining options."""

    config: "Config"
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)


Field = Callable[[RunSpec], Any]


def path_identity(path: str | Path | None) -> dict[str, Any] | None:
    """Who a model file (or directory) is: resolved path, size and modification time; None when absent."""
    if not path:
        return None
    path = Path(path).expanduser()
    if not path.exists():
        return None
    if path.is_file():
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    stats = [p.stat() for p in files]
    return {"path": str(path.resolve()), "files": len(files), "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def content_hash(path: str | Path | None) -> str | None:
    """SHA-256 of a small file's bytes (a calibration file): its content defines results, not its name."""
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _found(role: str, chosen: str, weights_dir: str, backend: str = "auto") -> Path | None:
    from ..backends.base import weights_family
    from ..errors import IapasError
    from ..weights.manifest import chosen_or_found

    try:
        return chosen_or_found(role, chosen, weights_dir, weights_family(backend))
    except IapasError:  # missing weights fail later with their own message, when the model loads
        return None


# model role -> where the run's config says its file is
MODEL_PATHS: dict[str, Callable[["Config"], Path | str | None]] = {
    "detector": lambda c: _found("detector", c.detection.weights, c.weights_dir, c.detection.backend),
    "segmenter": lambda c: _found("segmenter", c.masking.weights, c.weights_dir, c.masking.backend),
    "clip": lambda c: _found("clip", c.clip_methods.weights, c.weights_dir),
    "adaclip_prompts": lambda c: c.clip_methods.adaclip_prompts or Path(c.weights_dir) / "adaclip" / "adaclip_prompts.pt",
    # the RAM taggers' file when present (auto-ram falls back to auto's CLIP without it), else auto's or clip's CLIP
    "tagger": lambda c: c.calibration.tagger_weights
    or (c.calibration.tagger in ("ram", "auto-ram") and _found("tagger-ram", "", c.weights_dir))
    or (_found("clip", c.clip_methods.weights, c.weights_dir) if c.calibration.tagger in ("auto", "clip", "auto-ram") else None),
    "dinov2": lambda c: _found("dinov2", c.musc.weights, c.weights_dir),
    "anomalydino_dinov2": lambda c: _found("dinov2", c.anomalydino.weights, c.weights_dir),
    "llm": lambda c: c.calibration.llm_model if c.calibration.llm_model and Path(c.calibration.llm_model).exists() else None,
}
# method -> the models its results depend on; "calibrates" adds the preprocessing models (eval calibrates itself)
METHOD_MODELS: dict[str, tuple[str, ...]] = {
    "iapas": ("detector", "segmenter"),
    "winclip": ("clip",),
    "adaclip": ("clip", "adaclip_prompts"),
    "musc": ("clip", "dinov2"),
    "anomalydino": ("anomalydino_dinov2",),
}
PREPROCESSING_MODELS = ("tagger", "llm")


def model_identities(run: RunSpec) -> dict[str, Any]:
    """The identity of every model file the run's results depend on."""
    roles = METHOD_MODELS.get(run.method, ())
    if run.method == "iapas" and run.options.get("calibrates"):
        roles = roles + PREPROCESSING_MODELS
    return {role: path_identity(MODEL_PATHS[role](run.config)) for role in roles}


def defining_config(config: "Config", skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config's settings that change results, as flat dotted keys (those starting with a `skip` prefix left out)."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(value, dotted + ".")
            elif dotted not in NOT_DEFINING and not dotted.startswith(skip):
                flat[dotted] = value

    walk(config.to_dict(), "")
    return flat


def resolved_arithmetic(config: "Config") -> str:
    """The precision the models run at on this machine (`auto` resolved by the config's device)."""
    from ..device import resolve_device
    from ..acceleration.precision import resolve_precision

    return resolve_precision(config.precision, resolve_device(config.device))


# The fields of each command's fingerprint; a new result-defining field is one more line.
COMMON_FIELDS: dict[str, Field] = {
    "version": lambda run: FINGERPRINT_VERSION,
    "method": lambda run: run.method,
    "config": lambda run: defining_config(run.config),
    "models": model_identities,
    # the arithmetic that ran: precision `auto` is bf16 on one machine and fp32 on another
    "arithmetic": lambda run: resolved_arithmetic(run.config),
}
SEGMENT_FIELDS: dict[str, Field] = {
    **COMMON_FIELDS,
    # segment does not calibrate: the calibration file's content stands for the preprocessing settings
    "config": lambda run: defining_config(run.config, skip=("calibration.",)),
    "prompts": lambda run: list(run.options.get("prompts") or []),
    "calibration": lambda run: content_hash(run.options.get("calibration")),
    "size_filter": lambda run: not run.options.get("no_size_filter", False),
    "category": lambda run: run.options.get("category"),
}
EVAL_FIELDS: dict[str, Field] = {
    **COMMON_FIELDS,
    "dataset": lambda run: run.options["dataset"],
    "root": lambda run: str(Path(run.options["root"]).resolve()),  # a relative and an absolute root are one dataset
    "ablate": lambda run: sorted(run.options.get("ablate") or []),
    "image_score": lambda run: run.options.get("image_score", "max"),
    "limit": lambda run: int(run.options.get("limit") or 0),
    "bins": lambda run: run.options.get("bins"),
    "protocol": lambda run: run.options.get("protocol", "full"),
    "from_maps": lambda run: str(Path(run.options["from_maps"]).resolve()) if run.options.get("from_maps") else None,
}


def build_fingerprint(run: RunSpec, fields: Mapping[str, Field]) -> dict[str, Any]:
    """The fingerprint of a run: every field of the table, evaluated on it (JSON-ready)."""
    return json.loads(json.dumps({name: compute(run) for name, compute in fields.items()}, default=str))


def digest(fingerprint: Mapping[str, Any]) -> str:
    """A short stable hash of a fingerprint, stored in every result file."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node and not {"path", "size"} <= set(node):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What changed between two fingerprints, one short phrase per changed leaf."""
    before, after = _flat(old), _flat(new)
    changed = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            continue
        if isinstance(after.get(key), Mapping) or isinstance(before.get(key), Mapping):
            changed.append(f"{key} changed")  # a model file: its path, size or time
        else:
            changed.append(f"{key} {_short(before.get(key))} -> {_short(after.get(key))}")
    return changed


def check_fingerprint(folder: str | Path, fingerprint: Mapping[str, Any], overwrite: bool = False) -> str:
    """Refuse (one line) when `folder` holds results of other settings; returns the digest this run's results carry.

    With `overwrite` nothing is refused (the caller redoes every result). Nothing is written: call
    record_fingerprint once the run is sure to start, so a refused command leaves no folder behind.
    """
    from ..errors import FingerprintMismatch

    folder = Path(folder)
    path = folder / FINGERPRINT_FILE
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {"unreadable": True}
        if old != dict(fingerprint):
            changed = differences(old, fingerprint) if isinstance(old, Mapping) else ["the fingerprint file"]
            listed = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise FingerprintMismatch(
                f"{folder} holds results made with other settings ({listed}); "
                f"add --overwrite to redo them, or choose another output folder"
            )
    return digest(fingerprint)


def record_fingerprint(folder: str | Path, fingerprint: Mapping[str, Any]) -> None:
    """Keep this run's fingerprint beside its results (replacing an older one after --overwrite)."""
    from ..errors import OutputError
    from ..files import atomic_write_text

    try:
        atomic_write_text(Path(folder) / FINGERPRINT_FILE, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    except OSError as error:
        raise OutputError(f"cannot write to {folder}: {error.strerror or error}") from None


def check_or_record(folder: str | Path, fingerprint: Mapping[str, Any], overwrite: bool = False) -> str:
    """check_fingerprint, then record_fingerprint: the digest of a run that starts now."""
    result = check_fingerprint(folder, fingerprint, overwrite)
    record_fingerprint(folder, fingerprint)
    return result
