"""Downloads that never corrupt: concurrent runs, resume of hub files, stalls, complete partials, bad lock files.

Every test talks to a LocalServer on 127.0.0.1 that the test starts and that stops by itself.
"""
import sys as _sys, pathlib as _pathlib; _sys.path.insert(0, str(_pathlib.Path(__file__).parent))
import hashlib
import json
import resource
import signal
import threading
from pathlib import Path

import pytest

from iapas.errors import WeightsError
from iapas.weights.download import download
from local_server import Served
from test_download import HUB_FILES, HUB_REPO, SAM_BYTES, hub_env, run_download, write_test_manifest  # noqa: F401

SECOND_REPO = "iapas-test/tiny-detector-b"


def append_hub_entry(manifest: Path, sources: Path, name: str, repo: str, fmt: str, expected: str, files: list[str]) -> None:
    """One more manifest entry and its hub download source."""
    manifest.write_text(manifest.read_text() + f'''
[[model]]
name = "{name}"
family = "test"
role = "{"detector" if fmt == "hf-dir" else "tagger"}"
format = "{fmt}"
expected_path = "{expected}"
source = "test"
required_files = {json.dumps(files) if fmt == "hf-dir" else "[]"}
''')
    sources.write_text(sources.read_text() + f'''
[[download]]
entry = "{name}"
profiles = ["default"]
hub = "{repo}"
files = {json.dumps(files)}
''')


def two_hub_entries(tmp_path: Path, server) -> tuple[Path, Path]:
    """The test manifest plus a second hub directory entry served from another repository."""
    manifest, sources = write_test_manifest(tmp_path, hashlib.sha256(SAM_BYTES).hexdigest())
    append_hub_entry(manifest, sources, "tiny-detector-b", SECOND_REPO, "hf-dir", "tiny-detector-b",
                     ["config.json", "model.safetensors"])
    for name, data in HUB_FILES.items():
        server.serve_hub_file(SECOND_REPO, name, data[::-1], lfs=name.endswith(".safetensors"))
    return manifest, sources


def test_two_runs_at_once_into_one_weights_dir(hub_env, tmp_path):
    """Same entry twice and two entries at once: every file arrives once and the lock file keeps every hash."""
    manifest, sources = two_hub_entries(tmp_path, hub_env)
    for path, served in list(hub_env.files.items()):
        if path.endswith("model.safetensors"):
            served.stall_s = 0.3  # both runs are inside their downloads at the same time
    weights = tmp_path / "weights"
    outcomes: dict[int, list] = {}

    def run(index: int, names: list[str]) -> None:
        outcomes[index] = download(names, None, weights, str(tmp_path / f"cache{index}"), report=lambda line: None,
                                   manifest_path=manifest, sources_path=sources)

    threads = [threading.Thread(target=run, args=(0, ["tiny-detector"])),
               threading.Thread(target=run, args=(1, ["tiny-detector"])),
               threading.Thread(target=run, args=(2, ["tiny-detector-b"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(o.status for runs in outcomes.values() for o in runs)
    assert statuses == ["downloaded", "downloaded", "present"]  # the second run of one entry waited and found it
    for name, data in HUB_FILES.items():
        assert (weights / "tiny-detector" / name).read_bytes() == data
        assert (weights / "tiny-detector-b" / name).read_bytes() == data[::-1]
    lock = json.loads((weights / "downloads.lock.json").read_text())
    assert lock == {**{f"tiny-detector/{n}": hashlib.sha256(d).hexdigest() for n, d in HUB_FILES.items()},
                    **{f"tiny-detector-b/{n}": hashlib.sha256(d[::-1]).hexdigest() for n, d in HUB_FILES.items()}}
    assert not [p for p in weights.rglob("*") if "lock" in p.name and p.name != "downloads.lock.json"]


def test_interrupted_hub_file_resumes_and_leaves_no_incomplete(hub_env, tmp_path):
    path = f"/{HUB_REPO}/resolve/main/model.safetensors"
    hub_env.files[path].cut_once_after = 20_000
    first, _ = run_download(tmp_path)
    assert first["tiny-detector"].status == "failed" and "re-run to resume" in first["tiny-detector"].detail
    second, _ = run_download(tmp_path)
    assert second["tiny-detector"].status == "downloaded"
    assert ("GET", path, "bytes=20000-") in hub_env.requests  # resumed, not restarted from byte 0
    assert (tmp_path / "weights" / "tiny-detector" / "model.safetensors").read_bytes() == HUB_FILES["model.safetensors"]
    assert not list(tmp_path.rglob("*.incomplete")) and not list(tmp_path.rglob("*.partial"))


def test_a_complete_partial_is_checked_and_moved_into_place(hub_env, tmp_path):
    partial = tmp_path / "weights" / ".downloads" / "tiny_sam.pth.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(SAM_BYTES)  # a run killed after the last byte, before the rename
    outcomes, messages = run_download(tmp_path)
    assert outcomes["tiny-sam"].status == "downloaded", outcomes["tiny-sam"].detail
    assert (tmp_path / "weights" / "tiny_sam.pth").read_bytes() == SAM_BYTES and not partial.exists()


def test_a_trickling_server_ends_with_one_line_and_keeps_the_partial(hub_env, tmp_path):
    hub_env.files["/models/tiny_sam.pth"] = Served(SAM_BYTES[:200], trickle_s=0.05)
    outcomes, messages = run_download(tmp_path, stall_timeout=0.5)
    detail = outcomes["tiny-sam"].detail
    assert outcomes["tiny-sam"].status == "failed" and "stalled" in detail and "re-run to resume" in detail
    assert (tmp_path / "weights" / ".downloads" / "tiny_sam.pth.partial").stat().st_size > 0


def test_a_hub_answer_without_etag_says_so(hub_env, tmp_path):
    hub_env.serve_hub_file(HUB_REPO, "config.json", HUB_FILES["config.json"], lfs=False, etag="")
    outcomes, _ = run_download(tmp_path)
    detail = outcomes["tiny-detector"].detail
    assert "without an ETag" in detail and "offline" not in detail


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "folder"])
def test_a_broken_lock_file_is_one_line(hub_env, tmp_path, content):
    lock = tmp_path / "weights" / "downloads.lock.json"
    lock.parent.mkdir(parents=True)
    lock.mkdir() if content == "folder" else lock.write_text(content)
    with pytest.raises(WeightsError, match="lock file .*downloads.lock.json .*delete it"):
        run_download(tmp_path)


def test_weights_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "weights").write_text("not a folder")
    with pytest.raises(WeightsError, match="is a file, not a folder"):
        run_download(tmp_path)


def test_a_full_disk_on_a_hub_entry_is_one_line(hub_env, tmp_path):
    """RLIMIT_FSIZE makes every write past 30 kB fail with EFBIG, as a full disk fails with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, hard))
    try:
        outcomes, messages = run_download(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    detail = outcomes["tiny-detector"].detail
    assert outcomes["tiny-detector"].status == "failed" and "free space" in detail and "\n" not in detail


def at_once(count: int, call, gate: threading.Event) -> None:
    """`call` in `count` threads started together; `gate` opens once they have had time to arrive, then all finish."""
    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    threading.Event().wait(0.3)
    gate.set()
    for thread in threads:
        thread.join(timeout=30)


def test_a_cache_is_built_by_one_of_several_processes_at_once(tmp_path):
    """The `.hf/` conversion and export caches: concurrent first uses build once, the others wait and reuse."""
    from iapas.files import built_once

    target, builds, gate = tmp_path / "model.pt.hf", [], threading.Event()

    def fill(partial: Path) -> None:
        builds.append(partial)
        gate.wait(5)  # hold the build open while the other threads arrive
        (partial / "weights.bin").write_bytes(b"x" * 1000)
        (partial / "config.json").write_text("{}")

    at_once(4, lambda: built_once(target, fill, lambda t: (t / "config.json").is_file()), gate)
    assert len(builds) == 1
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt.hf"]


def test_a_single_file_hub_entry_resumes_and_lands_whole(hub_env, tmp_path):
    """A checkpoint kept as one file in a hub repository (RAM's .pth): the same resumable path as a folder's files."""
    data = bytes(range(256)) * 400
    hub_env.serve_hub_file("iapas-test/tagger", "tagger.pth", data, lfs=True)
    hub_env.files["/iapas-test/tagger/resolve/main/tagger.pth"].cut_once_after = 30_000
    manifest, sources = write_test_manifest(tmp_path, hashlib.sha256(SAM_BYTES).hexdigest())
    append_hub_entry(manifest, sources, "tiny-tagger", "iapas-test/tagger", "pth", "tagger.pth", ["tagger.pth"])
    weights = tmp_path / "weights"

    def fetch():
        return download(["tiny-tagger"], None, weights, str(tmp_path / "cache"), report=lambda line: None,
                        manifest_path=manifest, sources_path=sources)[0]

    assert fetch().status == "failed"
    assert fetch().status == "downloaded"
    assert ("GET", "/iapas-test/tagger/resolve/main/tagger.pth", "bytes=30000-") in hub_env.requests
    assert (weights / "tagger.pth").read_bytes() == data and not (weights / ".downloads" / "tiny-tagger").exists()


def test_a_versioned_conversion_is_made_once_by_concurrent_first_uses(tmp_path):
    """converted_once with a converter version (the `.hf/` record of version and source hash): one thread converts."""
    from iapas.backends.groundingdino_convert import converted_once

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    made, gate = [], threading.Event()

    def convert(out: Path) -> Path:
        made.append(out)
        gate.wait(5)
        (out / "config.json").write_text("{}")
        return out

    at_once(3, lambda: converted_once(checkpoint, convert, "test", 1), gate)
    assert len(made) == 1 and (tmp_path / "model.pt.hf" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.hf"]
