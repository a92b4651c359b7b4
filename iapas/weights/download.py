"""`iapas weights download`: fetch manifest entries, check every file's hash, move them into place whole.

Sources are listed in `resources/downloads.toml`, keyed by manifest entry. Hub entries go through
huggingface_hub (HF_ENDPOINT, HF_HUB_OFFLINE and its cache are honoured, and interrupted downloads
resume from its `.incomplete` files); plain URLs through a small resumable HTTP client (HTTP Range on a
`.partial` file). Each file is hashed before it is moved into the weights dir: against the sha256 the
manifest pins, else against the content hash the hub publishes for it (its LFS sha256, or the git blob
sha1 of a small file), and that sha256 is then recorded in `<weights>/downloads.lock.json` so a later
download must match it. An entry with any bad file is left out whole, never half there.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import WeightsError
from ..files import atomic_directory, atomic_write_text
from .manifest import WeightEntry, load_manifest, sha256_of

DOWNLOADS_PATH = Path(__file__).parents[1] / "resources" / "downloads.toml"
LOCK_FILE = "downloads.lock.json"
PROFILES = ("default", "official", "fast", "all")
CHUNK = 1 << 20
HTTP_TIMEOUT_S = 30.0  # per connection attempt and per read; a stalled server is an error, not a hang


@dataclass(frozen=True)
class DownloadSource:
    """Where one manifest entry comes from: a hub repository's files, or one URL."""

    entry: str
    profiles: tuple[str, ...]
    hub: str = ""
    revision: str = "main"
    files: tuple[str, ...] = ()
    sha256: dict[str, str] = field(default_factory=dict)  # hub file -> pinned sha256
    url: str = ""
    sha256_prefix: str = ""  # a url file's published hash prefix (open_clip names its files with one)
    gated: bool = False  # a hub repository whose licence the user must accept (and log in) before it serves files


@dataclass(frozen=True)
class DownloadOutcome:
    """What happened to one entry: "downloaded", "present" or "failed" (with the one-line reason)."""

    entry: str
    status: str
    detail: str = ""


def load_sources(path: Path = DOWNLOADS_PATH) -> list[DownloadSource]:
    """Every download source, in file order."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return [DownloadSource(entry=raw["entry"], profiles=tuple(raw.get("profiles", ())), hub=raw.get("hub", ""),
                           revision=raw.get("revision", "main"), files=tuple(raw.get("files", ())),
                           sha256=dict(raw.get("sha256", {})), url=raw.get("url", ""),
                           sha256_prefix=raw.get("sha256_prefix", ""), gated=bool(raw.get("gated", False)))
            for raw in data.get("download", [])]


def select_sources(names: list[str], profile: str | None, sources: list[DownloadSource]) -> list[DownloadSource]:
    """The sources named, or those of a profile (default: the "default" profile); unknown names are an error."""
    by_name = {source.entry: source for source in sources}
    if names:
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise WeightsError(f"no download source for {unknown[0]!r} (downloadable: {', '.join(by_name)})")
        return [by_name[name] for name in names]
    profile = profile or "default"
    if profile not in PROFILES:
        raise WeightsError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    chosen = [source for source in sources if profile in source.profiles]
    if not chosen:
        raise WeightsError(f"profile {profile!r} has no downloadable entries yet")
    return chosen


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (what the hub publishes as the ETag of a small, non-LFS file)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class Lock:
    """`downloads.lock.json`: the sha256 of every file downloaded without a manifest pin (trust on first use)."""

    def __init__(self, weights_dir: Path) -> None:
        self.path = Path(weights_dir) / LOCK_FILE
        self.hashes: dict[str, str] = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def record(self, key: str, sha256: str) -> None:
        self.hashes[key] = sha256
        atomic_write_text(self.path, json.dumps(self.hashes, indent=2, sort_keys=True) + "\n")


def check_hash(path: Path, key: str, pinned: str, published: str, lock: Lock) -> str:
    """The file's sha256 when it matches the pin (or the hub's hash and the lock); else a WeightsError."""
    actual = sha256_of(path)
    if pinned:
        if actual != pinned:
            raise WeightsError(f"{key}: sha256 {actual[:12]}... differs from the manifest's {pinned[:12]}...; file left out")
        return actual
    if published:
        published_hash = actual if len(published) == 64 else git_blob_sha1(path)
        if published_hash != published:
            raise WeightsError(f"{key}: content hash differs from the one the server publishes; file left out")
    elif key not in lock.hashes:
        raise WeightsError(f"{key}: no pinned sha256 and the server publishes no content hash; file left out")
    if key in lock.hashes and lock.hashes[key] != actual:
        raise WeightsError(f"{key}: sha256 {actual[:12]}... differs from the one recorded in {lock.path} on first download")
    return actual


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, read at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def mirrored(url: str) -> str:
    """`url` with its scheme and host replaced by IAPAS_DOWNLOAD_MIRROR when set (a local mirror or proxy)."""
    mirror = os.environ.get("IAPAS_DOWNLOAD_MIRROR", "").rstrip("/")
    if not mirror:
        return url
    scheme, _, rest = url.partition("://")
    return mirror + "/" + rest.partition("/")[2]


def fetch_url(url: str, target: Path, progress: Callable[[int, int], None] = lambda done, total: None) -> Path:
    """Download `url` to `target`, resuming a `<target>.partial` left by an interrupted run (HTTP Range)."""
    if offline():
        raise WeightsError(f"offline (HF_HUB_OFFLINE is set): cannot fetch {url}")
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            resumed = start and response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (start if resumed else 0)
            with open(partial, "ab" if resumed else "wb") as handle:
                done = start if resumed else 0
                while block := response.read(CHUNK):
                    handle.write(block)
                    done += len(block)
                    progress(done, total)
            if total and done != total:
                raise WeightsError(f"{url}: connection closed after {done} of {total} bytes; re-run to resume")
    except urllib.error.HTTPError as error:
        raise WeightsError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        if isinstance(error, WeightsError):
            raise
        reason = getattr(error, "reason", error)
        raise WeightsError(f"{url}: cannot download ({reason}); re-run to resume") from None
    os.replace(partial, target)
    return target


def fetch_hub_file(source: DownloadSource, filename: str, cache_dir: str | None) -> tuple[Path, str]:
    """One hub file through huggingface_hub's cache, and the content hash the hub publishes for it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: the hub's constants were fixed at import time
    where = f"{source.hub}/{filename}"
    try:
        published = ""
        if not offline():
            metadata = get_hf_file_metadata(hf_hub_url(source.hub, filename, revision=source.revision, endpoint=endpoint))
            published = metadata.etag or ""
        path = hf_hub_download(source.hub, filename, revision=source.revision, cache_dir=cache_dir, endpoint=endpoint,
                               local_files_only=offline())
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        raise WeightsError(f"{where}: offline and not in the hub cache") from None
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", "?")
        if type(error).__name__ == "GatedRepoError" or (source.gated and status in (401, 403)):
            raise WeightsError(f"{source.hub} is gated: accept its licence at https://huggingface.co/{source.hub} and log in "
                               "(`hf auth login`), then download again") from None
        raise WeightsError(f"{where}: HTTP {status} from the hub") from None
    except Exception as error:  # the hub client's connection errors have their own classes; all mean "not fetched"
        message = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise WeightsError(f"{where}: cannot download ({message})") from None
    return Path(path), published


def download_entry(source: DownloadSource, entry: WeightEntry, weights_dir: Path, lock: Lock,
                   cache_dir: str | None = None, progress: Callable[[int, int], None] = lambda d, t: None) -> Path:
    """Fetch one entry into the weights dir; it appears there only when every file's hash matched."""
    weights_dir = Path(weights_dir)
    target = entry.location(weights_dir)
    if source.url:
        staging = weights_dir / ".downloads" / Path(entry.expected_path).name
        fetch_url(mirrored(source.url), staging, progress)
        try:
            if entry.sha256 or not source.sha256_prefix:
                check_hash(staging, entry.name, entry.sha256, "", lock)  # url entries are pinned in the manifest...
            else:  # ...or carry their publisher's hash prefix; the full hash is then recorded
                actual = sha256_of(staging)
                if not actual.startswith(source.sha256_prefix):
                    raise WeightsError(f"{entry.name}: sha256 {actual[:12]}... does not start with the published "
                                       f"{source.sha256_prefix}; file left out")
                recorded = lock.hashes.get(entry.name)
                if recorded is not None and recorded != actual:  # the lock's rule (check_hash), on the hash in hand
                    raise WeightsError(f"{entry.name}: sha256 {actual[:12]}... differs from the one recorded in "
                                       f"{lock.path} on first download")
                lock.record(entry.name, actual)
        except WeightsError:
            staging.unlink(missing_ok=True)
            raise
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return target

    if entry.format != "hf-dir":  # one checkpoint file kept in a hub repository (RAM's .pth), not a model folder
        if len(source.files) != 1:
            raise WeightsError(f"{entry.name}: a {entry.format} entry downloads one hub file, the sources list {len(source.files)}")
        cached, published = fetch_hub_file(source, source.files[0], cache_dir)
        key = f"{entry.name}/{source.files[0]}"
        actual = check_hash(cached, key, source.sha256.get(source.files[0], ""), published, lock)
        staging = weights_dir / ".downloads" / Path(entry.expected_path).name
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        if not source.sha256.get(source.files[0]):
            lock.record(key, actual)
        return target

    def fill(partial: Path) -> None:
        for filename in source.files:
            cached, published = fetch_hub_file(source, filename, cache_dir)
            key = f"{entry.name}/{filename}"
            actual = check_hash(cached, key, source.sha256.get(filename, ""), published, lock)
            (partial / filename).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, partial / filename)
            if not source.sha256.get(filename):
                lock.record(key, actual)

    return atomic_directory(target, fill)


def download(names: list[str], profile: str | None, weights_dir: Path, cache_dir: str | None = None,
             report: Callable[[str], None] = print, progress_factory=None, manifest_path: Path | None = None,
             sources_path: Path = DOWNLOADS_PATH) -> list[DownloadOutcome]:
    """Download the chosen entries not yet present; one outcome per entry, failures do not stop the others."""
    from .manifest import is_present

    manifest = {entry.name: entry for entry in (load_manifest(manifest_path) if manifest_path else load_manifest())}
    sources = select_sources(names, profile, load_sources(sources_path))
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    lock = Lock(weights_dir)
    outcomes = []
    for source in sources:
        entry = manifest.get(source.entry)
        if entry is None:
            outcomes.append(DownloadOutcome(source.entry, "failed", "not in the weights manifest"))
            continue
        if is_present(entry, weights_dir):
            outcomes.append(DownloadOutcome(entry.name, "present", str(entry.location(weights_dir))))
            continue
        bar = progress_factory(entry.name) if progress_factory else None
        try:
            path = download_entry(source, entry, weights_dir, lock, cache_dir,
                                  (lambda done, total: bar(done, total)) if bar else (lambda done, total: None))
            outcomes.append(DownloadOutcome(entry.name, "downloaded", str(path)))
        except WeightsError as error:
            outcomes.append(DownloadOutcome(entry.name, "failed", str(error)))
            report(f"iapas: error: {error}")
    return outcomes
