"""`iapas segment --engine ray` on a local two-CPU Ray cluster started by the test."""
import sys as _sys, pathlib as _pathlib; _sys.path.insert(0, str(_pathlib.Path(__file__).parent))
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.cli import main
from conftest import write_rgb

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with two CPU workers, shut down after the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def synthetic_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "line2").mkdir(parents=True)
    for index in range(5):
        write_rgb(folder / f"part_{index}.png", 64, 80, seed=index)
    write_rgb(folder / "line2" / "part_0.png", 72, 72, seed=10)
    return folder


def segment(folder: Path, out: Path, weights_dir: Path, *extra: str) -> int:
    return main(["segment", str(folder), "-o", str(out), "--weights", str(weights_dir), "--prompt", "scratch",
                 "--no-progress", *extra])


def result_files(out: Path) -> dict[str, Path]:
    """Every result file under `out` by its relative path (the run's fingerprint, summary, report, thumbnails and
    hidden files left out)."""
    return {path.relative_to(out).as_posix(): path for path in sorted(out.rglob("*"))
            if path.is_file() and not path.name.startswith((".", "iapas-fingerprint"))
            and path.name not in ("summary.csv", "report.html") and path.relative_to(out).parts[0] != "thumbnails"}


def test_ray_engine_matches_local_and_resumes(local_ray, synthetic_folder, weights_dir, tmp_path, capsys):
    assert segment(synthetic_folder, tmp_path / "local", weights_dir) == 0
    assert segment(synthetic_folder, tmp_path / "ray", weights_dir, "--engine", "ray", "--workers", "2") == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("6 images: 6 segmented, 0 skipped")
    local, remote = result_files(tmp_path / "local"), result_files(tmp_path / "ray")
    assert sorted(local) == sorted(remote) and len(local) == 6 * 5  # each image done once, every file there (the mask: IAP-AS decides by its kept boxes)
    for name in local:
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(local[name]), np.load(remote[name]))
        if name.endswith(".json"):
            a, b = json.loads(local[name].read_text()), json.loads(remote[name].read_text())
            assert [box["xyxy"] for box in a["boxes"]] == [box["xyxy"] for box in b["boxes"]]
    before = {name: path.stat().st_mtime_ns for name, path in remote.items()}
    assert segment(synthetic_folder, tmp_path / "ray", weights_dir, "--engine", "ray") == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("6 images: 0 segmented, 6 skipped")
    assert {name: path.stat().st_mtime_ns for name, path in result_files(tmp_path / "ray").items()} == before


def test_ray_engine_reads_a_list_file_and_reports_failures(local_ray, synthetic_folder, weights_dir, tmp_path, capsys):
    broken = synthetic_folder / "broken.png"
    broken.write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# inspection line 1\n{synthetic_folder / 'part_1.png'}\n{broken}\n")
    code = main(["segment", "--list", str(listing), "-o", str(tmp_path / "out"), "--weights", str(weights_dir),
                 "--no-progress", "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 1
    assert "iapas: error:" in err and "broken.png" in err
    assert (tmp_path / "out" / "part_1.png.json").is_file() and not (tmp_path / "out" / "broken.png.json").exists()


def test_uri_inputs_need_the_ray_engine(weights_dir, tmp_path, capsys):
    assert main(["segment", "s3://bucket/a.png", "-o", str(tmp_path), "--weights", str(weights_dir)]) == 2
    assert capsys.readouterr().err.strip() == "iapas: error: s3://bucket/a.png is a URI: read URIs with --engine ray"


def test_ray_engine_leaves_an_image_claimed_by_another_run(local_ray, synthetic_folder, weights_dir, tmp_path, capsys):
    """The local engine's per-output claims hold under Ray too: an image another run is working on is not redone."""
    from iapas.runs.claims import claim_path, try_claim

    out = tmp_path / "out"
    held = try_claim(claim_path(out, "part_2.png"))  # another run is segmenting part_2.png right now
    assert held is not None
    try:
        assert segment(synthetic_folder, out, weights_dir, "--engine", "ray") == 0
    finally:
        held.release()
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("6 images: 5 segmented, 0 skipped") and "1 in progress in another run" in summary
    assert not (out / "part_2.png.json").exists() and (out / "part_1.png.json").is_file()


def test_ray_engine_hands_batch_size_images_to_the_method(local_ray, synthetic_folder, weights_dir, tmp_path, capsys):
    """`--batch-size 3` under Ray: the actors' batched runs write what the unbatched local run writes (maps within 1e-5).

    At fp32, the arithmetic that claim is made for (the default recipe's `auto` is bf16 on a CPU with it)."""
    assert segment(synthetic_folder, tmp_path / "local", weights_dir, "--precision", "fp32") == 0
    assert segment(synthetic_folder, tmp_path / "ray", weights_dir, "--engine", "ray", "--workers", "2", "--batch-size", "3",
                   "--precision", "fp32") == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("6 images: 6 segmented, 0 skipped")
    local, remote = result_files(tmp_path / "local"), result_files(tmp_path / "ray")
    assert sorted(local) == sorted(remote) and len(local) == 6 * 5
    for name in local:
        if name.endswith(".npy"):  # batched arithmetic rounds differently (docs/speed.md, Batching): within 1e-5
            np.testing.assert_allclose(np.load(remote[name]), np.load(local[name]), rtol=0, atol=1e-5)
        if name.endswith(".json"):
            a, b = json.loads(local[name].read_text()), json.loads(remote[name].read_text())
            assert [box["phrase"] for box in a["boxes"]] == [box["phrase"] for box in b["boxes"]]
            # boxes within 1e-4 px, written rounded to 0.01 px: at most one rounding step apart
            np.testing.assert_allclose([box["xyxy"] for box in b["boxes"]], [box["xyxy"] for box in a["boxes"]], rtol=0, atol=0.0101)


class Recording:
    """A real method's Segment that notes how many images each call hands it."""

    def __init__(self, segment, calls):
        self.segment, self.calls = segment, calls

    def __call__(self, pixels):
        self.calls.append(1)
        return self.segment(pixels)

    def many(self, images):
        self.calls.append(len(images))
        return self.segment.many(images)


def test_segment_actor_batches_its_rows_and_fails_one_image_in_its_place(pipeline, synthetic_folder, tmp_path):
    """The actor (run here, in this process) gives the method `batch_size` images at a time; a broken file fails alone."""
    from iapas.runs.claims import claim_path
    from iapas.cli.segment import PipelineCall
    from iapas.engines.ray_engine import SegmentActor, rows_per_call
    from iapas.runs.outputs import is_done

    broken = synthetic_folder / "broken.png"
    broken.write_bytes(b"not an image")
    sources = [synthetic_folder / f"part_{index}.png" for index in range(2)] + [broken] + \
              [synthetic_folder / f"part_{index}.png" for index in range(2, 5)]
    stems = [path.name for path in sources]
    calls = []
    actor = SegmentActor(lambda: Recording(PipelineCall(pipeline, {"prompts": ["scratch"]}), calls), str(tmp_path / "out"),
                         80_000_000, {"fingerprint": "f"}, batch_size=3)
    rows = actor({"source": np.array([str(path) for path in sources]), "stem": np.array(stems),
                  "bytes": np.array([b""] * len(sources), dtype=object)})
    assert list(rows["status"]) == ["done", "done", "failed", "done", "done", "done"]
    assert "broken.png" in rows["message"][2] and not rows["message"][0]
    assert calls == [3, 2]  # the five readable images: a batch of three, then the other two
    for stem in stems:
        assert not claim_path(tmp_path / "out", stem).exists()  # every claim released
        assert is_done(tmp_path / "out", stem, "f") == (stem != "broken.png")
    alone = pipeline.segment(np.asarray(Image.open(sources[3]).convert("RGB")), prompts=["scratch"])
    np.testing.assert_allclose(np.load(tmp_path / "out" / "part_2.png.npy"), alone.anomaly_map, rtol=0, atol=1e-5)
    assert [rows_per_call(size) for size in (1, 2, 3, 8)] == [4, 4, 6, 8]  # whole method batches per Ray Data call


@pytest.mark.parametrize("extra, named", [
    (["--prompt", "scratch"], "--prompt is IAP-AS's detector prompt word; the CLIP methods take --category NAME"),
    (["--calibration", "cal.json", "--no-size-filter"],
     "--calibration is IAP-AS's calibration file; --method winclip does not use it (also misplaced: --no-size-filter)")])
def test_iapas_only_options_with_a_clip_method_are_refused_before_the_ray_engine_starts(
        synthetic_folder, weights_dir, tmp_path, capsys, monkeypatch, extra, named):
    """Under --engine ray the segmenter is built inside an actor; the check must come first, as one line."""
    from iapas.engines import ENGINES

    started = []
    monkeypatch.setitem(ENGINES._entries, "ray", lambda *args, **kwargs: started.append(args))
    out = tmp_path / "out"
    argv = ["segment", str(synthetic_folder), "-o", str(out), "--weights", str(weights_dir), "--no-progress",
            "--engine", "ray", "--method", "winclip", *extra]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"iapas: error: {named}"]
    assert started == [] and not (out / "iapas-fingerprint.json").exists()  # refused before the engine or any record


def test_a_two_image_ray_run_shows_the_local_engines_progress_and_warning_and_no_ray_logs(weights_dir, tmp_path):
    """A real `iapas segment --engine ray` in a fresh process, so Ray starts (and logs) as it does for a user."""
    import os
    import re
    import subprocess
    import sys

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "100"}
    done = subprocess.run([sys.executable, "-m", "iapas", "segment", str(folder), "-o", str(tmp_path / "out"), "--weights",
                           str(weights_dir), "--engine", "ray", "--workers", "1", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in re.split(r"[\r\n]+", done.stderr) if line.strip()]
    assert any(re.match(r"segment: 100%.* 2/2 ", line) for line in lines)  # the local engine's bar, finished
    assert lines[-1].startswith("2 images: 2 segmented, 0 skipped")  # its summary line
    assert sum("holds RANDOM WEIGHTS" in line for line in lines) == 2  # the detector's and the segmenter's warning
    ours = re.compile(r"^(segment: +\d+%|WARNING: .* holds RANDOM WEIGHTS|2 images: )")
    assert [line for line in lines if not ours.match(line)] == []  # nothing of Ray's own
    assert done.stdout == ""
