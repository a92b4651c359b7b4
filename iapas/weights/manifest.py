"""The weights manifest: which checkpoints iapas knows, where they go, and checking them."""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import WeightsError

MANIFEST_PATH = Path(__file__).parents[1] / "resources" / "manifest.toml"  # the one manifest: shipped in the package, nowhere else


@dataclass(frozen=True)
class WeightEntry:
    """One known checkpoint: a file or a Hugging Face-format directory under the weights dir."""

    name: str
    family: str
    role: str  # detector | segmenter | tagger | clip | llm
    format: str  # pth | hf-dir | gguf
    expected_path: str  # relative to the weights dir
    source: str
    size: int = 0  # bytes of the file; 0 when not pinned (directories)
    sha256: str = ""
    license: str = ""
    required_files: tuple[str, ...] = ()
    demo: bool = False  # random tiny weights built by `iapas weights make-demo`

    def location(self, weights_dir: Path) -> Path:
        return Path(weights_dir) / self.expected_path

    def where_to_get(self) -> str:
        return f"manifest entry '{self.name}' in iapas/resources/manifest.toml, shown by `iapas weights list` (source: {self.source})"


def load_manifest(path: Path = MANIFEST_PATH) -> list[WeightEntry]:
    """All entries of the manifest, in file order (preferred first within a role)."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    entries = []
    for raw in data.get("model", []):
        raw = dict(raw)
        raw["required_files"] = tuple(raw.get("required_files", ()))
        entries.append(WeightEntry(**raw))
    return entries


def entries_for(role: str, manifest: Iterable[WeightEntry] | None = None) -> list[WeightEntry]:
    return [entry for entry in (manifest or load_manifest()) if entry.role == role]


def is_present(entry: WeightEntry, weights_dir: Path) -> bool:
    """Whether the entry's file or directory (with its required files) exists."""
    location = entry.location(weights_dir)
    if entry.format == "hf-dir":
        return location.is_dir() and all((location / name).exists() for name in entry.required_files)
    return location.is_file()


def find_weights(role: str, weights_dir: str | Path, family: str = "") -> tuple[WeightEntry, Path]:
    """The first manifest entry of `role` (and `family`, when given) present under weights_dir, or a WeightsError naming what to get."""
    weights_dir = Path(weights_dir)
    candidates = [entry for entry in entries_for(role) if not family or entry.family == family]
    if not candidates:
        raise WeightsError(f"no {family} {role} is listed in the weights manifest (iapas/resources/manifest.toml)")
    for entry in candidates:
        if is_present(entry, weights_dir):
            return entry, entry.location(weights_dir)
    preferred = next((entry for entry in candidates if not entry.demo), candidates[0])
    from ..folders import weights_search_note

    raise WeightsError(
        f"no {role} weights in {weights_dir}/: expected {preferred.location(weights_dir)} "
        f"(see {preferred.where_to_get()}), or run `iapas weights make-demo {weights_dir}` for meaningless demo weights"
        f"{weights_search_note(weights_dir)}"
    )


def chosen_or_found(role: str, chosen: str | Path | None, weights_dir: str | Path, family: str = "") -> Path:
    """The path the user chose for `role`, else the first manifest entry of that role (and family) present in weights_dir."""
    return Path(chosen) if chosen else find_weights(role, weights_dir, family)[1]


def entry_for_path(path: Path) -> WeightEntry | None:
    """The manifest entry whose expected file or directory name matches `path`, if any."""
    for entry in load_manifest():
        if Path(entry.expected_path).name == path.name:
            return entry
    return None


def file_identity(path: str | Path) -> str:
    """A short hash of what a model file or directory is: resolved path, size and mtime of every file.

    Cheap (no reading of multi-GB files) and changes whenever a file is replaced or edited, so a
    cache keyed on it never serves one model's answers for another of the same base name.
    """
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256(str(path).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"\0{file.relative_to(path) if file != path else ''}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Verification:
    """The state of one manifest entry in a weights dir."""

    entry: WeightEntry
    status: str  # ok | present | missing | incomplete | wrong size | wrong sha256
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "present")


def verify_entry(entry: WeightEntry, weights_dir: Path, check_hash: bool = True) -> Verification:
    """Check presence, size and sha256 of one entry."""
    location = entry.location(weights_dir)
    if entry.format == "hf-dir":
        if not location.is_dir():
            return Verification(entry, "missing")
        absent = [name for name in entry.required_files if not (location / name).exists()]
        if absent:
            return Verification(entry, "incomplete", f"lacks {', '.join(absent)}")
        return Verification(entry, "present", "directory; files present, not hashed")
    if not location.is_file():
        return Verification(entry, "missing")
    size = location.stat().st_size
    if entry.size and size != entry.size:
        return Verification(entry, "wrong size", f"{size} bytes, expected {entry.size}")
    if check_hash and entry.sha256:
        actual = sha256_of(location)
        if actual != entry.sha256:
            return Verification(entry, "wrong sha256", f"{actual[:12]}..., expected {entry.sha256[:12]}...")
        return Verification(entry, "ok", "size and sha256 match")
    return Verification(entry, "present", "no checksum pinned" if not entry.sha256 else "hash not checked")
