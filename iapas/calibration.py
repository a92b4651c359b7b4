"""The calibration file: what preprocessing (steps 1-1 to 1-3) found, reusable by `segment`."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import KIND_THRESHOLDS, unit_interval
from .errors import CalibrationFileError, ValueRangeError
from .files import atomic_write_text

CALIBRATION_FORMAT = 1


@dataclass(frozen=True)
class Calibration:
    """T_n, the LLM's answer, P_adj, P_final, S_threshold and the detection thresholds of one category."""

    tags: tuple[str, ...]
    llm_answer: str
    p_adj: tuple[str, ...]
    p_final: tuple[str, ...]
    size_threshold: float
    object_size: float | None  # largest object box / image area found in step 1-2 (None: nothing found)
    box_threshold: float
    text_threshold: float
    kind: str
    category: str = ""
    seed: int = 111
    normal_images: tuple[str, ...] = ()
    calibration_images: tuple[str, ...] = ()
    models: dict[str, str] = field(default_factory=dict)
    template: dict[str, str] = field(default_factory=dict)
    ablated: tuple[str, ...] = ()
    recipe: str = "iapas"  # the recipe whose rules made it (config.recipe)
    format: int = CALIBRATION_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "calibration") -> "Calibration":
        """Check every field's type and range (one CalibrationFileError naming the first bad one), then build."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise CalibrationFileError(f"{source} has unknown field {unknown[0]!r}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        absent = [name for name in required if name not in data]
        if absent:
            raise CalibrationFileError(f"{source} is incomplete: it lacks {', '.join(absent)}")
        values = {name: _checked(name, value, source) for name, value in data.items()}
        return cls(**values)


STRING_LISTS = ("tags", "p_adj", "p_final", "normal_images", "calibration_images", "ablated")
STRINGS = ("llm_answer", "kind", "category")
FRACTIONS = ("size_threshold", "box_threshold", "text_threshold")
STRING_MAPS = ("models", "template")


def _checked(name: str, value: Any, source: str) -> Any:
    """One field of a calibration file, type- and range-checked (a string is never split into letters)."""
    def wrong(expected: str) -> CalibrationFileError:
        return CalibrationFileError(f"{source}: field {name!r} must be {expected}, got {json.dumps(value)[:80]}")

    if name in STRING_LISTS:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise wrong("a list of strings")
        return tuple(value)
    if name in STRINGS:
        if not isinstance(value, str):
            raise wrong("a string")
        if name == "kind" and value not in KIND_THRESHOLDS:
            raise wrong(" or ".join(map(repr, KIND_THRESHOLDS)))
        return value
    if name in FRACTIONS or (name == "object_size" and value is not None):
        try:
            return unit_interval(value, f"{source}: field {name!r}")
        except ValueRangeError as error:
            raise CalibrationFileError(str(error)) from None
    if name in STRING_MAPS:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise wrong("an object of strings")
        return dict(value)
    if name in ("seed", "format"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
    return value


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration JSON file, or raise a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationFileError(f"calibration file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: nested too deep
        raise CalibrationFileError(f"calibration file is not valid JSON: {path} ({str(error) or 'nested too deep'})") from None
    if not isinstance(data, dict):
        raise CalibrationFileError(f"calibration file must hold a JSON object: {path}")
    if data.get("format") != CALIBRATION_FORMAT:
        raise CalibrationFileError(f"calibration file {path} has format {data.get('format')!r}, expected {CALIBRATION_FORMAT}")
    return Calibration.from_dict(data, f"calibration file {path}")


def calibration_table(calibration: Calibration, title: str = "calibration"):
    """A rich Table of a calibration, for `iapas calibrate --show`."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    object_size = "none found" if calibration.object_size is None else f"{calibration.object_size:.3f}"
    rows = [
        ("category / kind", f"{calibration.category or '-'} / {calibration.kind}"),
        ("T_n (tags)", ", ".join(calibration.tags) or "-"),
        ("LLM answer", calibration.llm_answer or "-"),
        ("P_adj", ", ".join(calibration.p_adj) or "-"),
        ("P_final", ", ".join(calibration.p_final)),
        ("S_threshold", f"{calibration.size_threshold:.3f} (largest object box: {object_size})"),
        ("box / text threshold", f"{calibration.box_threshold} / {calibration.text_threshold}"),
        ("seed / images", f"{calibration.seed} / {len(calibration.normal_images)} normal, {len(calibration.calibration_images)} for size"),
        ("models", ", ".join(f"{k}={v}" for k, v in calibration.models.items())),
        ("template", f"{calibration.template.get('name', '-')} ({calibration.template.get('sha256', '')[:12]})"),
        ("ablated", ", ".join(calibration.ablated) or "-"),
        ("recipe", calibration.recipe),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
