"""The thresholds file: operating thresholds together with everything that gives them their meaning.

A threshold only means something on the maps it was fitted on, so the file records the method, the
settings that change maps (the config's map-defining keys and the command's options), the models by
the SHA-256 of their content (not their path or time, so the file moves to another machine on the line
with its models) and the score scale. `iapas segment --thresholds FILE` refuses a file made for another
method, other settings or other models, in one line saying what differs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import DecisionError
from .thresholds import Threshold

if TYPE_CHECKING:
    from ..config import Config

FORMAT = "iapas-thresholds"
VERSION = 1

# what one value of each method's map means; docs/decisions.md says the same at length
MAP_MEANINGS = {
    "iapas": "sum over kept boxes of detector confidence x SAM mask, clipped to [0, 1]",
    "winclip": "CLIP zero-shot window scores (softmax over normal/anomalous prompts, harmonic aggregation); a narrow band",
    "adaclip": "softmax probability of the anomalous prompt per pixel, smoothed; image score: the method's own HSF score",
    "anomalyclip": "softmax probability of the learned anomalous prompt per pixel, smoothed",
    "faprompt": "softmax probability of the learned anomalous prompt per pixel, smoothed",
    "genclip": "softmax probability of the anomalous prompt per pixel, smoothed",
    "musc": "half the distance of a patch to its nearest patches in the other images of the set: relative to the set",
    "anomalydino": "half the cosine distance of a patch to its nearest normal reference patch, smoothed",
}


# the config sections only one family of methods reads; every method but IAP-AS keeps "clip" (the CLIP methods',
# whose shots and reference images AnomalyDINO reads and whose CLIP MuSc may run on)
METHOD_SECTIONS = {
    "iapas": ("detection.", "filtering.", "scoring.", "masking.", "prompts."),
    "clip": ("clip_methods.",),
    "musc": ("musc.",),
    "anomalydino": ("anomalydino.",),
}


def refuse_per_image_normalisation(config: "Config", method: str, what: str = "an image threshold") -> None:
    """One line when the maps are min-max normalised per image: the official IAP-AS recipe makes any kept box 1.0."""
    if method == "iapas" and config.scoring.normalise == "minmax":
        raise DecisionError(f"the {config.recipe} recipe min-max normalises every map per image (any kept box scores 1.0), "
                            f"so {what} means nothing on its maps; fit and apply thresholds with --recipe iapas "
                            "(maps clipped to [0, 1]), or use --binarize mebin")


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: str | Path | None) -> str | None:
    """SHA-256 of a model file's bytes, or of a directory's files (their relative names and contents); None when absent."""
    if not path:
        return None
    path = Path(path).expanduser()
    if path.is_file():
        stat = path.stat()
        return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts) or file.name == "DEMO_WEIGHTS":
            continue
        stat = file.stat()
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(_file_digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


def model_files(config: "Config", method: str) -> dict[str, Any]:
    """The model files a method's maps depend on, by role (None where a file is not found)."""
    from ..runs.fingerprint import METHOD_MODELS, MODEL_PATHS

    weights = Path(config.weights_dir)
    learned = {
        "anomalyclip": config.clip_methods.prompts or weights / "anomalyclip" / "anomalyclip_prompts.pt",
        "faprompt": config.clip_methods.prompts or weights / "faprompt" / "faprompt_prompts.pt",
        "genclip": config.clip_methods.genclip_prompts or config.clip_methods.prompts or weights / "genclip" / "genclip_prompts.pt",
    }
    files = {role: MODEL_PATHS[role](config) for role in METHOD_MODELS.get(method, ("clip",))}
    if method in learned:
        files["prompts"] = learned[method]
    return files


def setup_identity(config: "Config", method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What a threshold's meaning depends on: method, map-defining settings, models by content, score scale."""
    from ..runs.fingerprint import defining_config, content_hash

    # only the settings of the method's own stages change its maps: another box threshold leaves WinCLIP's as they were
    own = METHOD_SECTIONS.get(method, ()) + (METHOD_SECTIONS["clip"] if method != "iapas" else ())
    others = tuple(prefix for prefixes in METHOD_SECTIONS.values() for prefix in prefixes if prefix not in own)
    settings = defining_config(config, skip=("calibration.", *others))
    settings.update({
        "prompts": list(options.get("prompts") or []),
        "calibration": content_hash(options.get("calibration")),
        "size_filter": not options.get("no_size_filter", False),
        "category": options.get("category"),
    })
    return {
        "method": method,
        "settings": json.loads(json.dumps(settings, default=str)),
        "models": {role: content_sha256(path) for role, path in model_files(config, method).items()},
        "score_scale": {"map": MAP_MEANINGS.get(method, "a [0, 1] anomaly map"), "range": [0.0, 1.0],
                        # Result.image_score: IAP-AS gives its map's maximum, every CLIP method its own score
                        "image_score": "max of the map" if method == "iapas" else "the method's own image score",
                        "normalise": config.scoring.normalise if method == "iapas" else "method's own"},
    }


@dataclass(frozen=True)
class ThresholdsFile:
    """Thresholds and the setup they were fitted for."""

    identity: dict[str, Any]
    image: Threshold | None = None
    pixel: Threshold | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.identity,
                "image_threshold": self.image.to_dict() if self.image else None,
                "pixel_threshold": self.pixel.to_dict() if self.pixel else None,
                "fitted_on": self.fitted_on, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def save(self, path: str | Path) -> Path:
        from ..files import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ThresholdsFile":
        """Read a thresholds file, or a one-line DecisionError saying what is wrong with it."""
        path = Path(path)
        if not path.is_file():
            raise DecisionError(f"thresholds file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise DecisionError(f"thresholds file {path} is not readable JSON: {error}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DecisionError(f"{path} is not an iapas thresholds file (from `iapas threshold` or `iapas eval`)")
        if data.get("version") != VERSION:
            raise DecisionError(f"thresholds file {path} has version {data.get('version')!r}; this iapas reads version {VERSION}")
        missing = [key for key in ("method", "settings", "models", "score_scale") if not isinstance(data.get(key), (str, dict))]
        if missing:
            raise DecisionError(f"thresholds file {path} lacks {', '.join(missing)}")
        image = Threshold.from_dict(data["image_threshold"], f"{path}: image_threshold") if data.get("image_threshold") else None
        pixel = Threshold.from_dict(data["pixel_threshold"], f"{path}: pixel_threshold") if data.get("pixel_threshold") else None
        if image is None and pixel is None:
            raise DecisionError(f"thresholds file {path} holds neither an image nor a pixel threshold")
        identity = {key: data[key] for key in ("method", "settings", "models", "score_scale")}
        return cls(identity, image, pixel, dict(data.get("fitted_on") or {}))

    def check_matches(self, identity: Mapping[str, Any], path: str | Path) -> None:
        """Refuse, in one line, a file made for another method, other settings, other models or another scale."""
        from ..runs.fingerprint import differences

        if self.identity["method"] != identity["method"]:
            raise DecisionError(f"thresholds file {path} was made for --method {self.identity['method']}, "
                                f"not {identity['method']}")
        changed = differences(self.identity, identity)
        if changed:
            listed = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise DecisionError(f"thresholds file {path} was made for other settings ({listed}); "
                                f"fit new thresholds for these settings with `iapas threshold`")



def demo_models(config: "Config", method: str) -> list[str]:
    """The model files of a method's maps that are random demo weights (their maps, and any verdict, mean nothing)."""
    from ..backends.base import is_demo

    return [f"{role}: {path}" for role, path in model_files(config, method).items() if path and Path(path).exists()
            and is_demo(Path(path))]
