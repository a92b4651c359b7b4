"""`iapas weights download` against a local server in the hub's and a plain URL layout (no network)."""
import sys as _sys, pathlib as _pathlib; _sys.path.insert(0, str(_pathlib.Path(__file__).parent))
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iapas.weights.download import download, git_blob_sha1, select_sources, load_sources
from iapas.errors import WeightsError
from local_server import LocalServer, Served

HUB_REPO = "iapas-test/tiny-detector"
HUB_FILES = {"config.json": b'{"model_type": "grounding-dino"}\n', "model.safetensors": os.urandom(50_000)}
SAM_BYTES = os.urandom(200_000)


def write_test_manifest(tmp_path: Path, sam_sha256: str) -> tuple[Path, Path]:
    """A manifest with one hub directory and one pinned URL file, and where to download them."""
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(f'''
[[model]]
name = "tiny-detector"
family = "grounding-dino"
role = "detector"
format = "hf-dir"
expected_path = "tiny-detector"
source = "test"
required_files = ["config.json", "model.safetensors"]

[[model]]
name = "tiny-sam"
family = "sam"
role = "segmenter"
format = "pth"
expected_path = "tiny_sam.pth"
source = "test"
size = {len(SAM_BYTES)}
sha256 = "{sam_sha256}"
''')
    sources = tmp_path / "downloads.toml"
    sources.write_text(f'''
[[download]]
entry = "tiny-detector"
profiles = ["default"]
hub = "{HUB_REPO}"
files = ["config.json", "model.safetensors"]

[[download]]
entry = "tiny-sam"
profiles = ["default"]
url = "https://example.invalid/models/tiny_sam.pth"
''')
    return manifest, sources


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Point huggingface_hub at a local server; online for this test only."""
    import huggingface_hub.constants

    server = LocalServer(lifetime_s=120)
    for name, data in HUB_FILES.items():
        server.serve_hub_file(HUB_REPO, name, data, lfs=name.endswith(".safetensors"))
    server.files["/models/tiny_sam.pth"] = Served(SAM_BYTES)
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("IAPAS_DOWNLOAD_MIRROR", server.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


def run_download(tmp_path, sam_sha256=None, **options):
    manifest, sources = write_test_manifest(tmp_path, sam_sha256 or hashlib.sha256(SAM_BYTES).hexdigest())
    messages = []
    outcomes = download([], "default", tmp_path / "weights", str(tmp_path / "hub-cache"), report=messages.append,
                        manifest_path=manifest, sources_path=sources, **options)
    return {outcome.entry: outcome for outcome in outcomes}, messages


def test_good_download_checks_hashes_and_records_unpinned_ones(hub_env, tmp_path):
    outcomes, messages = run_download(tmp_path)
    assert {name: o.status for name, o in outcomes.items()} == {"tiny-detector": "downloaded", "tiny-sam": "downloaded"}
    weights = tmp_path / "weights"
    for name, data in HUB_FILES.items():
        assert (weights / "tiny-detector" / name).read_bytes() == data
    assert (weights / "tiny_sam.pth").read_bytes() == SAM_BYTES
    lock = json.loads((weights / "downloads.lock.json").read_text())
    assert lock == {f"tiny-detector/{name}": hashlib.sha256(data).hexdigest() for name, data in HUB_FILES.items()}
    assert not list(weights.rglob("*.partial")) and messages == []
    again, _ = run_download(tmp_path)  # nothing to do the second time
    assert {o.status for o in again.values()} == {"present"}


def test_interrupted_url_download_resumes_with_a_range_request(hub_env, tmp_path):
    hub_env.files["/models/tiny_sam.pth"] = Served(SAM_BYTES, cut_once_after=70_000)
    first, messages = run_download(tmp_path)
    assert first["tiny-sam"].status == "failed" and "re-run to resume" in first["tiny-sam"].detail
    partial = tmp_path / "weights" / ".downloads" / "tiny_sam.pth.partial"
    assert partial.stat().st_size == 70_000 and not (tmp_path / "weights" / "tiny_sam.pth").exists()
    second, _ = run_download(tmp_path)
    assert second["tiny-sam"].status == "downloaded"
    assert ("GET", "/models/tiny_sam.pth", "bytes=70000-") in hub_env.requests
    assert (tmp_path / "weights" / "tiny_sam.pth").read_bytes() == SAM_BYTES and not partial.exists()


def test_hash_mismatch_leaves_the_file_out(hub_env, tmp_path):
    outcomes, messages = run_download(tmp_path, sam_sha256="0" * 64)
    assert outcomes["tiny-sam"].status == "failed"
    assert "sha256" in outcomes["tiny-sam"].detail and "differs from the manifest's 000000000000" in outcomes["tiny-sam"].detail
    assert not (tmp_path / "weights" / "tiny_sam.pth").exists()
    assert not list((tmp_path / "weights").rglob("tiny_sam*"))
    assert messages == [f"iapas: error: {outcomes['tiny-sam'].detail}"]
    assert outcomes["tiny-detector"].status == "downloaded"  # one bad entry does not stop the others


def test_hub_file_whose_content_differs_from_the_published_hash(hub_env, tmp_path):
    hub_env.serve_hub_file(HUB_REPO, "model.safetensors", HUB_FILES["model.safetensors"], lfs=True, etag="f" * 64)
    outcomes, _ = run_download(tmp_path)
    assert outcomes["tiny-detector"].status == "failed"
    assert "content hash differs" in outcomes["tiny-detector"].detail
    assert not (tmp_path / "weights" / "tiny-detector").exists()
    assert not (tmp_path / "weights" / "tiny-detector.partial").exists()


def test_missing_file_is_a_404_line(hub_env, tmp_path):
    del hub_env.files["/models/tiny_sam.pth"]
    outcomes, _ = run_download(tmp_path)
    assert outcomes["tiny-sam"].detail.endswith("tiny_sam.pth: HTTP 404 Not Found")


def test_offline_is_one_line_per_entry(hub_env, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    outcomes, _ = run_download(tmp_path)
    assert outcomes["tiny-detector"].detail == f"{HUB_REPO}/config.json: offline and not in the hub cache"
    assert outcomes["tiny-sam"].detail.startswith("offline (HF_HUB_OFFLINE is set)")
    assert not hub_env.requests


def test_unreachable_server_is_a_one_line_error(tmp_path, monkeypatch):
    with LocalServer() as server:
        dead = server.url
    monkeypatch.setenv("IAPAS_DOWNLOAD_MIRROR", dead)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    outcomes, _ = run_download(tmp_path)
    assert outcomes["tiny-sam"].status == "failed" and "cannot download" in outcomes["tiny-sam"].detail


def test_profiles_and_names():
    sources = load_sources()
    assert {s.entry for s in select_sources([], "default", sources)} == {"grounding-dino-tiny", "sam-vit-b"}
    assert "sam-vit-h" in {s.entry for s in select_sources([], "official", sources)}
    with pytest.raises(WeightsError, match="no download source for 'nope'"):
        select_sources(["nope"], None, sources)
    assert git_blob_sha1.__doc__


def test_cli_download_against_a_local_hub(tmp_path, weights_dir):
    """The real command and the packaged sources: the detector comes from the hub layout, the SAM file's pinned
    sha256 (the real ViT-B's) does not match the demo bytes served, so it is left out and the exit status is 1."""
    demo = weights_dir / "demo" / "grounding-dino-demo"
    server = LocalServer(lifetime_s=120)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                 "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        source = demo / ("processor_config.json" if name == "preprocessor_config.json" else name)
        data = source.read_bytes() if source.is_file() else b"{}\n"
        server.serve_hub_file("IDEA-Research/grounding-dino-tiny", name, data, lfs=name.endswith(".safetensors"))
    server.files["/segment_anything/sam_vit_b_01ec64.pth"] = Served((weights_dir / "demo" / "sam_demo.pth").read_bytes())
    env = {**os.environ, "HF_ENDPOINT": "", "IAPAS_DOWNLOAD_MIRROR": "", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    with server:
        env.update(HF_ENDPOINT=server.url, IAPAS_DOWNLOAD_MIRROR=server.url)
        completed = subprocess.run([sys.executable, "-m", "iapas", "weights", "download", "--weights", str(tmp_path / "w")],
                                   capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 1, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert any(line.startswith("iapas: error: sam-vit-b: sha256 ") and "differs from the manifest's ec2df6273261" in line
               for line in lines)
    assert lines[-1] == "2 entries: 1 in place, 1 failed"
    assert (tmp_path / "w" / "grounding-dino-tiny" / "model.safetensors").read_bytes() == (demo / "model.safetensors").read_bytes()
    assert not (tmp_path / "w" / "sam_vit_b_01ec64.pth").exists()
    assert "Traceback" not in completed.stderr


def test_url_file_checked_against_its_published_hash_prefix(hub_env, tmp_path):
    manifest, sources = write_test_manifest(tmp_path, "")
    manifest.write_text(manifest.read_text().replace('sha256 = ""\n', ""))
    digest = hashlib.sha256(SAM_BYTES).hexdigest()
    sources.write_text(sources.read_text().replace('url = "https://example.invalid/models/tiny_sam.pth"',
                                                   f'url = "https://example.invalid/models/tiny_sam.pth"\nsha256_prefix = "{digest[:8]}"'))
    outcomes = download(["tiny-sam"], None, tmp_path / "w", manifest_path=manifest, sources_path=sources, report=print)
    assert outcomes[0].status == "downloaded"
    assert json.loads((tmp_path / "w" / "downloads.lock.json").read_text()) == {"tiny-sam": digest}
    sources.write_text(sources.read_text().replace(digest[:8], "deadbeef"))
    outcomes = download(["tiny-sam"], None, tmp_path / "w2", manifest_path=manifest, sources_path=sources, report=print)
    assert outcomes[0].status == "failed" and "does not start with the published deadbeef" in outcomes[0].detail
    assert not (tmp_path / "w2" / "tiny_sam.pth").exists()


def test_one_checkpoint_file_from_a_hub_repository(hub_env, tmp_path):
    """A `pth` entry whose source is a hub repository (RAM's): the one file lands at expected_path, hash-checked."""
    data = os.urandom(30_000)
    hub_env.serve_hub_file("iapas-test/tagger", "tagger.pth", data, lfs=True)
    manifest, sources = tmp_path / "manifest.toml", tmp_path / "downloads.toml"
    manifest.write_text('[[model]]\nname = "tagger"\nfamily = "ram"\nrole = "tagger-ram"\nformat = "pth"\n'
                        'expected_path = "tagger.pth"\nsource = "test"\n')
    sources.write_text('[[download]]\nentry = "tagger"\nprofiles = ["default"]\nhub = "iapas-test/tagger"\nfiles = ["tagger.pth"]\n')
    outcomes = download([], "default", tmp_path / "w", str(tmp_path / "cache"), manifest_path=manifest, sources_path=sources)
    assert [o.status for o in outcomes] == ["downloaded"] and (tmp_path / "w" / "tagger.pth").read_bytes() == data
    assert json.loads((tmp_path / "w" / "downloads.lock.json").read_text()) == {"tagger/tagger.pth": hashlib.sha256(data).hexdigest()}
    hub_env.serve_hub_file("iapas-test/tagger", "tagger.pth", data[::-1], lfs=True, etag=hashlib.sha256(data).hexdigest())
    (tmp_path / "w" / "tagger.pth").unlink()
    [failed] = download([], "default", tmp_path / "w", str(tmp_path / "cache2"), manifest_path=manifest, sources_path=sources)
    assert failed.status == "failed" and "content hash differs" in failed.detail and not (tmp_path / "w" / "tagger.pth").exists()


def test_gated_hub_repository_says_to_accept_the_licence_and_log_in(hub_env, tmp_path):
    """A gated repository (SAM 3) answers 401 with the hub's GatedRepo code: one line saying what the user must do."""
    manifest, sources = write_test_manifest(tmp_path, hashlib.sha256(SAM_BYTES).hexdigest())
    sources.write_text(sources.read_text().replace('hub = "', 'gated = true\nhub = "', 1))
    for name in HUB_FILES:
        hub_env.files[f"/{HUB_REPO}/resolve/main/{name}"] = Served(b"", {"X-Error-Code": "GatedRepo",
                                                                        "X-Error-Message": "Access restricted"}, status=401)
    messages = []
    outcomes = download(["tiny-detector"], None, tmp_path / "weights", str(tmp_path / "hub-cache"), report=messages.append,
                        manifest_path=manifest, sources_path=sources)
    assert outcomes[0].status == "failed"
    assert outcomes[0].detail == (f"{HUB_REPO} is gated: accept its licence at https://huggingface.co/{HUB_REPO} and log in "
                                  "(`hf auth login`), then download again")
