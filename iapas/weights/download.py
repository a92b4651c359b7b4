"""`iapas weights download`: fetch manifest entries, check every file's hash, move them into place whole.

Sources are listed in `resources/downloads.toml`, keyed by manifest entry. Every file, hub or URL, goes
through one small resumable HTTP client: it writes `<weights>/.downloads/<entry>/<file>.partial` and an
interrupted run (dropped connection, killed process) resumes it with an HTTP Range request; a server that
sends less than STALL_MIN_BYTES in `stall_timeout` seconds ends the file with one line, the partial kept.
Hub files take their URL, headers and published hash from huggingface_hub (HF_ENDPOINT and HF_TOKEN are
honoured; a file already in its cache is used from there; offline, only its cache is read). Each file is
hashed before it is moved into the weights dir: against the sha256 the manifest pins, else against the
content hash the hub publishes for it (its LFS sha256, or the git blob sha1 of a small file), and that
sha256 is then recorded in `<weights>/downloads.lock.json` so a later download must match it. An entry
with any bad file is left out whole, never half there.

Two runs into one weights dir at once are safe: each entry is downloaded under its own lock (a second run
waits, then finds it present), and the lock file is read, merged and atomically replaced under its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import WeightsError
from ..files import atomic_directory, atomic_write, atomic_write_text, check_writable_folder, exclusive, is_disk_full
from .manifest import WeightEntry, load_manifest, sha256_of

DOWNLOADS_PATH = Path(__file__).parents[1] / "resources" / "downloads.toml"
LOCK_FILE = "downloads.lock.json"
PROFILES = ("default", "official", "fast", "all")
CHUNK = 1 << 20
DEFAULT_STALL_TIMEOUT_S = 60.0  # no progress for this long ends a file (--stall-timeout); its partial is kept
STALL_MIN_BYTES = 1024  # fewer bytes than this within one stall window is no progress (a server trickling bytes)
STAGING = ".downloads"  # <weights>/.downloads/: partial files, resumed by the next run


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
    """`downloads.lock.json`: the sha256 of every file downloaded without a manifest pin (trust on first use).

    Each record re-reads the file, merges and atomically replaces it under the file's lock, so two runs
    recording different entries at once both keep their hashes.
    """

    def __init__(self, weights_dir: Path) -> None:
        self.path = Path(weights_dir) / LOCK_FILE
        self.hashes: dict[str, str] = self._read()

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        fix = "fix it or delete it (its hashes are then recorded afresh on the next download)"
        if not self.path.is_file():
            raise WeightsError(f"lock file {self.path} is not a file; {fix}")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep for the parser
            reason = (str(error).splitlines() or ["nested too deep"])[0]
            raise WeightsError(f"lock file {self.path} is not valid JSON ({reason}); {fix}") from None
        except OSError as error:
            raise WeightsError(f"cannot read lock file {self.path}: {error.strerror or error}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise WeightsError(f"lock file {self.path} must hold a JSON object of file -> sha256, "
                               f"not {type(data).__name__}; {fix}")
        return data

    def record(self, key: str, sha256: str) -> None:
        with exclusive(self.path):
            self.hashes = {**self._read(), key: sha256}
            atomic_write_text(self.path, json.dumps(self.hashes, indent=2, sort_keys=True) + "\n")

    def refresh(self) -> None:
        """Re-read the hashes another run may have recorded since."""
        with exclusive(self.path):
            self.hashes = self._read()


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


def _stall_check(stall_timeout: float) -> Callable[[int], bool]:
    """A function fed each block's size that says True once a window of `stall_timeout` s saw < STALL_MIN_BYTES."""
    import time

    window = {"start": time.monotonic(), "bytes": 0}

    def stalled(received: int) -> bool:
        window["bytes"] += received
        now = time.monotonic()
        if now - window["start"] < stall_timeout:
            return False
        if window["bytes"] < STALL_MIN_BYTES:
            return True
        window.update(start=now, bytes=0)
        return False

    return stalled


def fetch_url(url: str, target: Path, progress: Callable[[int, int], None] = lambda done, total: None,
              stall_timeout: float = DEFAULT_STALL_TIMEOUT_S, headers: dict[str, str] | None = None,
              expected_size: int = 0) -> Path:
    """Download `url` to `target`, resuming a `<target>.partial` left by an interrupted run (HTTP Range).

    A partial already `expected_size` long (or answered 416: nothing past its end) is complete: it is moved
    into place without a transfer and its hash is checked by the caller like any other file.
    """
    if offline():
        raise WeightsError(f"offline (HF_HUB_OFFLINE is set): cannot fetch {url}")
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = partial.stat().st_size if partial.is_file() else 0
    if start and start == expected_size:
        os.replace(partial, target)
        return target
    request = urllib.request.Request(url, headers={**(headers or {}), **({"Range": f"bytes={start}-"} if start else {})})
    stalled = _stall_check(stall_timeout)
    try:
        # the socket timeout bounds a silent server; _stall_check a server that trickles bytes
        with urllib.request.urlopen(request, timeout=stall_timeout) as response:
            resumed = start and response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (start if resumed else 0)
            try:
                with open(partial, "ab" if resumed else "wb") as handle:
                    done = start if resumed else 0
                    while block := response.read1(CHUNK):
                        handle.write(block)
                        done += len(block)
                        progress(done, total)
                        if stalled(len(block)):
                            raise WeightsError(f"{url}: stalled (under {STALL_MIN_BYTES} bytes in {stall_timeout:g} s, "
                                               f"{done} bytes so far); re-run to resume, or raise --stall-timeout")
            except OSError as error:
                if is_disk_full(error):
                    raise WeightsError(f"cannot write {partial}: {os.strerror(error.errno)}; free space and re-run "
                                       "to resume") from None
                raise
            if total and done != total:
                raise WeightsError(f"{url}: connection closed after {done} of {total} bytes; re-run to resume")
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # nothing past the partial's end: it is whole (its hash decides)
            os.replace(partial, target)
            return target
        raise WeightsError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        if isinstance(error, WeightsError):
            raise
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError):
            reason = f"no answer for {stall_timeout:g} s"
        raise WeightsError(f"{url}: cannot download ({reason}); re-run to resume") from None
    os.replace(partial, target)
    return target


def fetch_hub_file(source: DownloadSource, filename: str, cache_dir: str | None, staging: Path,
                   progress: Callable[[int, int], None] = lambda d, t: None,
                   stall_timeout: float = DEFAULT_STALL_TIMEOUT_S) -> tuple[Path, str]:
    """One hub file (from huggingface_hub's cache when there, else resumably into `staging`) and its published hash."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import build_hf_headers

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: the hub's constants were fixed at import time
    where = f"{source.hub}/{filename}"
    if offline():
        try:
            return Path(hf_hub_download(source.hub, filename, revision=source.revision, cache_dir=cache_dir,
                                        local_files_only=True)), ""
        except (OfflineModeIsEnabled, LocalEntryNotFoundError):
            raise WeightsError(f"{where}: offline and not in the hub cache") from None
    url = hf_hub_url(source.hub, filename, revision=source.revision, endpoint=endpoint)
    try:
        headers = build_hf_headers()
        metadata = get_hf_file_metadata(url, headers=headers, timeout=stall_timeout)
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", "?")
        if type(error).__name__ == "GatedRepoError" or (source.gated and status in (401, 403)):
            raise WeightsError(f"{source.hub} is gated: accept its licence at https://huggingface.co/{source.hub} and log in "
                               "(`hf auth login`), then download again") from None
        raise WeightsError(f"{where}: HTTP {status} from the hub") from None
    except Exception as error:  # the hub client's connection errors have their own classes; all mean "not fetched"
        message = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise WeightsError(f"{where}: cannot download ({message})") from None
    published = metadata.etag or ""
    if not published and not source.sha256.get(filename):
        # huggingface_hub reports this as "not in the cache"; the truth is the server's answer lacked the header
        raise WeightsError(f"{where}: the server answered without an ETag (a proxy or mirror that drops it?), so "
                           "there is no published hash to check the file against; pin its sha256 in downloads.toml "
                           "or download through a server that keeps the header")
    cached = try_to_load_from_cache(source.hub, filename, cache_dir=cache_dir, revision=source.revision)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached), published
    staged = staging / filename
    if staged.is_file() and metadata.size is not None and staged.stat().st_size == metadata.size:
        return staged, published  # fetched whole by an earlier run that failed on another file
    # LFS files redirect to a CDN whose signed URL must not get the hub token: fetch from where the HEAD pointed,
    # with the hub's headers only on the hub's own host
    location = metadata.location or url
    same_host = urllib.parse.urlsplit(location).netloc == urllib.parse.urlsplit(url).netloc
    target = fetch_url(location, staging / filename, progress, stall_timeout,
                       headers if same_host else {"user-agent": headers.get("user-agent", "iapas")}, metadata.size or 0)
    return target, published


def download_entry(source: DownloadSource, entry: WeightEntry, weights_dir: Path, lock: Lock,
                   cache_dir: str | None = None, progress: Callable[[int, int], None] = lambda d, t: None,
                   stall_timeout: float = DEFAULT_STALL_TIMEOUT_S) -> Path:
    """Fetch one entry into the weights dir; it appears there only when every file's hash matched."""
    weights_dir = Path(weights_dir)
    target = entry.location(weights_dir)
    if source.url:
        staging = weights_dir / STAGING / Path(entry.expected_path).name
        fetch_url(mirrored(source.url), staging, progress, stall_timeout)
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

    staging = weights_dir / STAGING / entry.name
    single = entry.format != "hf-dir"  # one checkpoint file kept in a hub repository (RAM's .pth), not a model folder
    if single and len(source.files) != 1:
        raise WeightsError(f"{entry.name}: a {entry.format} entry downloads one hub file, the sources list {len(source.files)}")

    fetched = []  # every file is fetched and checked first: a failure keeps the others staged for the next run
    for filename in source.files:
        path, published = fetch_hub_file(source, filename, cache_dir, staging, progress, stall_timeout)
        key = f"{entry.name}/{filename}"
        try:
            actual = check_hash(path, key, source.sha256.get(filename, ""), published, lock)
        except WeightsError:
            if path.is_relative_to(staging):
                path.unlink(missing_ok=True)  # a bad download is not resumed from
            raise
        fetched.append((filename, path))
        if not source.sha256.get(filename):
            lock.record(key, actual)

    if single:
        (_, path), = fetched
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_relative_to(staging):
            os.replace(path, target)
        else:  # from the hub's cache, which keeps its own copy: copied aside, then moved into place whole
            atomic_write(target, lambda temporary: shutil.copyfile(path, temporary))
        shutil.rmtree(staging, ignore_errors=True)
        return target

    def fill(partial: Path) -> None:
        for filename, path in fetched:
            (partial / filename).parent.mkdir(parents=True, exist_ok=True)
            if path.is_relative_to(staging):
                os.replace(path, partial / filename)
            else:
                shutil.copyfile(path, partial / filename)  # the hub's cache keeps its own copy

    built = atomic_directory(target, fill)
    shutil.rmtree(staging, ignore_errors=True)
    return built


def download(names: list[str], profile: str | None, weights_dir: Path, cache_dir: str | None = None,
             report: Callable[[str], None] = print, progress_factory=None, manifest_path: Path | None = None,
             sources_path: Path = DOWNLOADS_PATH, stall_timeout: float = DEFAULT_STALL_TIMEOUT_S) -> list[DownloadOutcome]:
    """Download the chosen entries not yet present; one outcome per entry, failures do not stop the others."""
    from .manifest import is_present

    manifest = {entry.name: entry for entry in (load_manifest(manifest_path) if manifest_path else load_manifest())}
    sources = select_sources(names, profile, load_sources(sources_path))
    weights_dir = Path(weights_dir)
    if weights_dir.exists() and not weights_dir.is_dir():
        raise WeightsError(f"weights dir {weights_dir} is a file, not a folder; give --weights a folder")
    check_writable_folder(weights_dir, "weights dir")
    weights_dir.mkdir(parents=True, exist_ok=True)
    lock = Lock(weights_dir)
    outcomes = []
    for source in sources:
        entry = manifest.get(source.entry)
        if entry is None:
            outcomes.append(DownloadOutcome(source.entry, "failed", "not in the weights manifest"))
            continue
        # one run per entry at a time: a second run waits here, then finds the entry present
        with exclusive(weights_dir / STAGING / entry.name):
            if is_present(entry, weights_dir):
                outcomes.append(DownloadOutcome(entry.name, "present", str(entry.location(weights_dir))))
                continue
            lock.refresh()
            bar = progress_factory(entry.name) if progress_factory else None
            try:
                path = download_entry(source, entry, weights_dir, lock, cache_dir,
                                      (lambda done, total: bar(done, total)) if bar else (lambda done, total: None),
                                      stall_timeout)
                outcomes.append(DownloadOutcome(entry.name, "downloaded", str(path)))
            except OSError as error:  # the staging copy or the rename into place: the weights dir's storage
                if not is_disk_full(error):
                    raise
                detail = (f"{entry.name}: cannot write into {weights_dir}: {os.strerror(error.errno)}; free space and "
                          "re-run (finished files are kept and resumed from)")
                outcomes.append(DownloadOutcome(entry.name, "failed", detail))
                report(f"iapas: error: {detail}")
            except WeightsError as error:
                outcomes.append(DownloadOutcome(entry.name, "failed", str(error)))
                report(f"iapas: error: {error}")
    return outcomes
