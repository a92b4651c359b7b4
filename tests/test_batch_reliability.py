"""Input classes of a batch run (issue 11): no silent wrong results, no batch stopped by one odd input."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from iapas.runs.batch import run_batch
from iapas.runs.claims import claim_path, try_claim
from iapas.cli import main
from iapas.config import Config
from iapas.errors import ImageProcessingError, InputImageError
from iapas.evaluation.evaluate import EvalOptions, run_eval
from iapas.files import TEMP_MARKER, atomic_write_text, remove_stale_temporaries
from iapas.runs.fingerprint import EVAL_FIELDS, SEGMENT_FIELDS, RunSpec, build_fingerprint, check_or_record
from iapas.images import collect_inputs, find_images, load_image
from iapas.methods import METHODS
from iapas.runs.outputs import assign_names
from iapas.types import Boxes, Masks, Result
from cli_runner import error_lines, run
from conftest import write_rgb

REPO = Path(__file__).resolve().parent.parent
# a subprocess that imports only the iapas modules it names, not the package's torch-loading __init__
LIGHT_IAPAS = (f"import sys, types; package = types.ModuleType('iapas'); package.__path__ = [{str(REPO / 'iapas')!r}]; "
               "sys.modules['iapas'] = package\n")




def mean_map(pixels):
    """A model-free segmenter: the map is the image's darkness, so every output is checkable."""
    heat = 1.0 - pixels.mean(axis=2).astype(np.float32) / 255
    return Result(heat, Boxes.empty(), Masks.empty(*heat.shape), ())


# --- silent wrong results -------------------------------------------------------------------------

def test_inputs_with_one_flat_name_get_distinct_stable_outputs(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name, seed in (("a.png", 1), ("a.bmp", 2), ("sub/x.png", 3), ("sub__x.png", 4)):
        write_rgb(folder / name, 20, 30, seed)
    inputs = collect_inputs([folder], report=None)
    summary = run_batch(mean_map, inputs, tmp_path / "out", progress=False)
    assert summary.segmented == 4
    for name in ("a.png", "a.bmp", "sub/x.png", "sub__x.png"):
        expected = mean_map(np.asarray(Image.open(folder / name).convert("RGB"))).anomaly_map
        assert np.array_equal(np.load(tmp_path / "out" / f"{name}.npy"), expected), name
    # the same relative path under two input folders, and one file named twice: distinct names, order-independent
    other = tmp_path / "other"
    other.mkdir()
    write_rgb(other / "a.png", 20, 30, 5)
    pairs = collect_inputs([folder, other, folder / "a.png"], report=None)
    names = dict(assign_names(pairs))
    assert len(pairs) == 5 and len(set(names.values())) == 5
    assert names[folder / "a.png"].startswith("a.png~") and names[other / "a.png"].startswith("a.png~")
    assert dict(assign_names(list(reversed(pairs)))) == names


def test_an_output_folder_inside_the_input_folder_is_not_read_back(capsys, weights_dir, image_folder):
    out = image_folder / "out"
    argv = ("segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")
    assert run(capsys, *argv)[0] == 0
    code, _, err = run(capsys, *argv)
    assert code == 0 and "3 images: 0 segmented, 3 skipped" in err
    # an earlier run's results in another folder under the input are recognised by their fingerprint file
    code, _, err = run(capsys, "segment", image_folder, "-o", image_folder.parent / "elsewhere", "--weights", weights_dir,
                       "--no-progress")
    assert code == 0 and "3 images: 3 segmented" in err and f"note: skipped {out}: it holds iapas results" in err


@pytest.fixture
def ksdd1_root(tmp_path):
    """A KolektorSDD layout whose Part names repeat across kos folders, as the real one's do."""
    root = tmp_path / "ksdd1"
    for kos, defect in (("kos01", True), ("kos02", False)):
        (root / kos).mkdir(parents=True)
        for part in ("Part0", "Part1"):
            write_rgb(root / kos / f"{part}.jpg", 40, 16, seed=hash((kos, part)) % 1000)
            label = np.zeros((40, 16), np.uint8)
            if defect and part == "Part0":
                label[10:20, 4:8] = 255
            Image.fromarray(label).save(root / kos / f"{part}_label.bmp")
    return root


class CountingMethod:
    """mean_map as a registered method, counting its calls and able to stop mid-category."""

    name = "test-counting"
    calls = 0
    stop_after = 0

    def prepare(self, category, normal_images, kind, out_dir):
        pass

    def segment(self, image):
        CountingMethod.calls += 1
        if self.stop_after and CountingMethod.calls > self.stop_after:
            raise KeyboardInterrupt
        return mean_map(image)


METHODS.register("test-counting")(lambda config, ablate: CountingMethod())


def test_eval_resume_and_saved_maps_by_dataset_relative_path(ksdd1_root, tmp_path, monkeypatch):
    CountingMethod.calls, CountingMethod.stop_after = 0, 2
    absolute = EvalOptions("ksdd1", ksdd1_root.resolve(), tmp_path / "res", method="test-counting", save_maps=True,
                           progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_eval(absolute, Config())
    monkeypatch.chdir(tmp_path)
    CountingMethod.calls, CountingMethod.stop_after = 0, 0
    relative = EvalOptions("ksdd1", Path("ksdd1"), Path("res"), method="test-counting", save_maps=True, progress=False)
    record = json.loads((run_eval(relative, Config()) / "categories" / "ksdd1.json").read_text())
    assert CountingMethod.calls == 2 and record["images"] == 4  # the relative root continued the absolute one
    maps = sorted(p.relative_to(tmp_path / "res/test-counting/maps").as_posix()
                  for p in (tmp_path / "res/test-counting/maps").rglob("*.npy"))
    assert maps == ["kos01/Part0.npy", "kos01/Part1.npy", "kos02/Part0.npy", "kos02/Part1.npy"]
    for name in maps:
        pixels = np.asarray(Image.open(ksdd1_root / (name[:-4] + ".jpg")).convert("RGB"))
        assert np.array_equal(np.load(tmp_path / "res/test-counting/maps" / name), mean_map(pixels).anomaly_map)


# --- results reused only when nothing that defines them changed --------------------------------------

def test_segment_refuses_results_of_other_settings(capsys, weights_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    base = ("segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")
    assert run(capsys, *base)[0] == 0
    code, _, err = run(capsys, *base, "--box-threshold", "0.3")
    assert code == 2 and err.strip() == (
        f"iapas: error: {out} holds results made with other settings (config.detection.box_threshold 0.2 -> 0.3); "
        "add --overwrite to redo them, or choose another output folder"
    )
    code, _, err = run(capsys, *base, "--prompt", "scratch")
    assert code == 2 and 'prompts [] -> ["scratch"]' in err
    code, _, err = run(capsys, *base, "--box-threshold", "0.3", "--overwrite")
    assert code == 0 and "3 segmented, 0 skipped" in err
    assert json.loads((out / "iapas-fingerprint.json").read_text())["config"]["detection.box_threshold"] == 0.3


def test_a_result_of_an_interrupted_overwrite_is_not_reused(tmp_path, image_folder):
    inputs = collect_inputs([image_folder], report=None)
    out = tmp_path / "out"
    assert run_batch(mean_map, inputs, out, progress=False, fingerprint="old").segmented == 3
    # the folder's fingerprint now says "new", but these results carry "old": all redone, none counted done
    summary = run_batch(mean_map, inputs, out, progress=False, fingerprint="new")
    assert (summary.segmented, summary.skipped) == (3, 0)
    assert run_batch(mean_map, inputs, out, progress=False, fingerprint="new").skipped == 3


def test_fingerprint_fields_models_and_limit(tmp_path, weights_dir):
    config = Config(weights_dir=str(weights_dir))
    spec = RunSpec(config, "iapas", {"dataset": "mvtec", "root": tmp_path, "limit": 4, "calibrates": True})
    limited = build_fingerprint(spec, EVAL_FIELDS)
    full = build_fingerprint(RunSpec(config, "iapas", {**spec.options, "limit": 0}), EVAL_FIELDS)
    check_or_record(tmp_path / "run", limited)
    with pytest.raises(Exception, match=r"limit 4 -> 0"):
        check_or_record(tmp_path / "run", full)
    # a model file that changed (same path, new contents) changes the fingerprint; a changed file is the folder's
    # newest (its identity is the newest mtime), so the bump goes past every file's, not only config.json's own:
    # on a loaded machine the demo weights are saved more than a second after their config.json
    detector = Path(limited["models"]["detector"]["path"])
    stamp = os.stat(detector / "config.json")
    newest = max(path.stat().st_mtime_ns for path in detector.rglob("*") if path.is_file())
    os.utime(detector / "config.json", ns=(stamp.st_atime_ns, newest + 10**9))
    try:
        with pytest.raises(Exception, match=r"models.detector changed"):
            check_or_record(tmp_path / "run", build_fingerprint(spec, EVAL_FIELDS))
    finally:
        os.utime(detector / "config.json", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    # a new field is one table entry
    with_recipe = {**SEGMENT_FIELDS, "recipe": lambda run: run.options.get("recipe", "paper")}
    assert build_fingerprint(RunSpec(config, "iapas", {"recipe": "fast"}), with_recipe)["recipe"] == "fast"


def test_eval_refuses_a_limited_run_for_a_full_one(capsys, ksdd1_root, tmp_path):
    argv = ["eval", "--dataset", "ksdd1", "--root", ksdd1_root, "--method", "test-counting", "-o", tmp_path / "r", "--no-progress"]
    assert run(capsys, *argv, "--limit", "2")[0] == 0
    code, _, err = run(capsys, *argv)
    assert code == 2 and "limit 2 -> 0" in err and len(err.strip().splitlines()) == 1
    CountingMethod.calls = 0
    assert run(capsys, *argv, "--overwrite")[0] == 0 and CountingMethod.calls == 4


# --- one odd image never stops a batch --------------------------------------------------------------

def test_thin_image_is_refused_and_the_batch_goes_on(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((2, 5000, 3), np.uint8)).save(folder / "thin.png")
    write_rgb(folder / "ok.png", 20, 30)
    reported = []
    summary = run_batch(mean_map, collect_inputs([folder], report=None), tmp_path / "out", progress=False,
                        report=reported.append)
    assert summary.segmented == 1 and len(summary.failures) == 1
    assert reported == [f"iapas: error: image too thin: {folder / 'thin.png'} is 5000x2 (aspect 2500:1, above 100:1); "
                        "crop it into tiles or pad it"]


def test_unexpected_failures_are_named_and_the_batch_goes_on(pipeline, tmp_path):
    good = write_rgb(tmp_path / "good.png", 32, 32)

    def explode(pixels):
        if pixels.shape[0] == 40:
            raise RuntimeError("CUDA error: device-side assert\ndetails")
        return mean_map(pixels)

    odd = write_rgb(tmp_path / "odd.png", 40, 32)
    summary = run_batch(explode, [(odd, None), (good, None)], tmp_path / "out", progress=False, report=lambda m: None)
    assert summary.segmented == 1
    assert summary.failures == [(odd, f"cannot segment {odd}: RuntimeError: CUDA error: device-side assert")]

    class Broken:
        name, inputs, outputs = "masking", ("boxes",), ("masks",)

        def run(self, **inputs):
            raise ValueError("shape mismatch")

    original = pipeline.graph
    pipeline.graph = original.replaced("masking", Broken())
    try:
        outcomes = list(pipeline.segment_batch([good, np.zeros((8, 8), np.float32)]))
    finally:
        pipeline.graph = original
    assert isinstance(outcomes[0][1], ImageProcessingError)
    assert str(outcomes[0][1]) == f"cannot segment {good}: ValueError: shape mismatch"
    assert isinstance(outcomes[1][1], InputImageError)  # a user's bad input keeps its own error


def test_exif_orientation_frames_nan_and_16_bit_rgb(tmp_path):
    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    Image.fromarray(upright).save(tmp_path / "rotated.png", exif=exif)
    loaded = load_image(tmp_path / "rotated.png")
    assert np.array_equal(loaded.pixels, np.rot90(upright, -1)) and "EXIF orientation 6 applied" in loaded.notes

    first, second = (Image.fromarray(np.full((10, 12, 3), v, np.uint8)) for v in (40, 200))
    first.save(tmp_path / "frames.tif", save_all=True, append_images=[second])
    loaded = load_image(tmp_path / "frames.tif")
    assert (loaded.pixels == 40).all() and "multi-frame file: the first of its 2 frames is used" in loaded.notes

    nan = np.ones((10, 12), np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(InputImageError, match=f"image contains NaN or infinite values: {tmp_path / 'nan.tif'}$"):
        load_image(tmp_path / "nan.tif")

    rgb16 = np.zeros((4, 5, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 1000, 300
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    grey16 = np.full((4, 5), 1000, np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    loaded = load_image(tmp_path / "rgb16.png")
    assert loaded.pixels[0, 0].tolist() == [255, 4, 1]  # value/257 rounded, as for 16-bit grey (PIL alone gives 3)
    assert load_image(tmp_path / "grey16.png").pixels[0, 0].tolist() == [4, 4, 4]


def test_16_bit_images_share_one_scale_and_a_fixed_window(capsys, tmp_path):
    dim = np.array([[1000, 2000], [1000, 2000]], np.uint16)
    bright = np.array([[1000, 60000], [1000, 60000]], np.uint16)
    for name, array in (("dim.png", dim), ("bright.png", bright)):
        Image.fromarray(array).save(tmp_path / name)
    # one raw value, one grey level, whatever else the image holds (the per-image stretch gave 0 and 0 here)
    assert load_image(tmp_path / "dim.png").pixels[:, :, 0].tolist() == [[4, 8], [4, 8]]
    assert load_image(tmp_path / "bright.png").pixels[:, :, 0].tolist() == [[4, 233], [4, 233]]
    window = load_image(tmp_path / "bright.png", bit_window=(1000, 3000))
    assert window.pixels[:, :, 0].tolist() == [[0, 255], [0, 255]]
    assert "50.0% of pixels outside [1000, 3000] clipped (set bit_window / --bit-window)" in window.notes
    assert load_image(tmp_path / "dim.png", bit_window=(0, 4000)).pixels[0, 1, 0] == 128  # 2000/4000*255 = 127.5
    with pytest.raises(SystemExit) as exit_status:  # argparse's own usage error, before anything runs
        main(["segment", str(tmp_path / "dim.png"), "--bit-window", "5,1"])
    assert exit_status.value.code == 2
    assert "argument --bit-window: bit window must have LOW < HIGH (finite numbers), got 5,1" in capsys.readouterr().err


# --- exit status, files, claims ------------------------------------------------------------------------

def test_disk_full_ends_the_batch_with_the_summary_and_exit_1(capsys, monkeypatch, weights_dir, image_folder, tmp_path):
    import iapas.runs.batch
    from iapas.runs.outputs import write_result

    written = []

    def filling(out_dir, name, *rest):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(name)
        return write_result(out_dir, name, *rest)

    monkeypatch.setattr(iapas.runs.batch, "write_result", filling)
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")
    assert code == 1
    assert error_lines(err) == [f"iapas: error: cannot write results to {out}: No space left on device (ENOSPC); "
                                "stopped after 1 of 3 images, finished results are kept"]
    assert err.strip().splitlines()[-1].startswith("3 images: 1 segmented, 0 skipped (already done), 0 failed;")
    assert err.strip().endswith("stopped early") and (out / "a.png.json").is_file()


def test_results_follow_the_umask(tmp_path, image_folder):
    previous = os.umask(0o027)
    try:
        run_batch(mean_map, collect_inputs([image_folder], report=None), tmp_path / "out", progress=False)
        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "out" / "a.png.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "out" / "a.png.npy").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o640


def test_a_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path, image_folder):
    out = tmp_path / "out"
    script = LIGHT_IAPAS + (
        "import os, signal, sys; from pathlib import Path; from iapas.files import atomic_write\n"
        "def die(p):\n    p.write_bytes(b'half'); os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(Path(sys.argv[1]) / 'a.png.npy', die)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL
    [leftover] = [p for p in out.iterdir() if TEMP_MARKER in p.name]
    live = out / f".b.png.npy{TEMP_MARKER}{os.getpid()}.abcd.npy"  # a running writer's file stays
    live.write_bytes(b"")
    assert find_images(out, report=None) == []  # never read as an input
    summary = run_batch(mean_map, collect_inputs([image_folder], report=None), out, progress=False)
    assert summary.segmented == 3 and not leftover.exists() and live.exists()
    assert remove_stale_temporaries(out) == []


def test_two_runs_never_do_the_same_image(tmp_path, image_folder):
    inputs = collect_inputs([image_folder], report=None)
    out = tmp_path / "out"
    done: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def slow_first(pixels):
        done.append("first")
        inside.set()
        release.wait(30)
        return mean_map(pixels)

    def second(pixels):
        done.append("second")
        return mean_map(pixels)

    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("first", run_batch(slow_first, inputs[:1], out, progress=False)))
    thread.start()
    assert inside.wait(30)  # the first run holds a.png's claim
    results["second"] = run_batch(second, inputs, out, progress=False)
    release.set()
    thread.join(30)
    assert (results["second"].segmented, results["second"].elsewhere) == (2, 1)
    assert "in progress in another run" in results["second"].line()
    assert results["first"].segmented == 1 and done.count("first") == 1 and done.count("second") == 2


def test_a_killed_runs_claim_is_taken_over(tmp_path):
    path = claim_path(tmp_path / "out", "a.png")
    holder = subprocess.Popen(
        [sys.executable, "-c", LIGHT_IAPAS + "import sys; from pathlib import Path; from iapas.runs.claims import try_claim\n"
         "claim = try_claim(Path(sys.argv[1])); print(claim is not None, flush=True); sys.stdin.read()", str(path)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert try_claim(path) is None  # held by a live process
        assert path.read_text().split()[0] == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    claim = try_claim(path)
    assert claim is not None
    claim.release()
    assert not path.exists()


# --- output and input folders -----------------------------------------------------------------------

def read_only(folder: Path, monkeypatch) -> None:
    """Make `folder` read-only; as root (where chmod does not stop writes) also refuse creations in it."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        import iapas.files

        real_open = os.open

        def refusing(path, flags, *rest):
            if Path(path).parent == folder and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *rest)

        monkeypatch.setattr(iapas.files.os, "open", refusing)


@pytest.mark.parametrize("command", [
    ["segment", "{images}"],
    ["calibrate", "{images}"],
    ["eval", "--dataset", "folder", "--root", "{images}"],
    ["train", "adaclip", "--dataset", "folder", "--root", "{images}"],
])
def test_unusable_output_is_one_line_before_any_model_loads(capsys, monkeypatch, tmp_path, image_folder, command):
    argv = [part.format(images=image_folder) for part in command] + ["--weights", str(tmp_path / "no-weights")]
    existing = tmp_path / "taken"
    existing.write_text("")
    target = existing / "x.json" if command[0] == "calibrate" else existing
    code, _, err = run(capsys, *argv, "-o", target)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"{existing}" in err and "file, not a folder" in err
    locked = tmp_path / "locked"
    read_only(locked, monkeypatch)
    try:
        target = locked / "c.json" if command[0] == "calibrate" else locked
        code, _, err = run(capsys, *argv, "-o", target)
    finally:
        locked.chmod(0o755)
    assert code == 2 and err.strip().startswith("iapas: error: cannot write to ") and "Permission denied" in err
    assert "weights" not in err  # refused before any model was looked for


def test_unreadable_sub_folders_are_skipped_with_a_note(monkeypatch, image_folder):
    blocked = image_folder / "sub"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    def is_file(self):  # what Python 3.11 does when a folder lacks the search permission
        if self.parent == blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_is_file(self)

    real_is_file = Path.is_file
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Path, "is_file", is_file)
    notes = []
    found = find_images(image_folder, report=notes.append)
    assert [p.name for p in found] == ["a.png", "b.jpg"]
    assert notes == [f"note: skipped unreadable folder {blocked}: Permission denied"]


def test_unreadable_sub_folders_with_chmod(image_folder):
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 folder; the monkeypatched test above covers this class")
    blocked = image_folder / "sub"
    blocked.chmod(0)
    try:
        notes = []
        assert [p.name for p in find_images(image_folder, report=notes.append)] == ["a.png", "b.jpg"]
        assert notes == [f"note: skipped unreadable folder {blocked}: Permission denied"]
    finally:
        blocked.chmod(0o755)


def test_symlinked_folders_are_followed_once(tmp_path, image_folder):
    (image_folder / "link").symlink_to(image_folder / "sub")
    (image_folder / "sub" / "loop").symlink_to(image_folder)
    found = [p.relative_to(image_folder).as_posix() for p in find_images(image_folder, report=None)]
    assert found == ["a.png", "b.jpg", "sub/c.bmp"]  # the real folder, not the link to it, and no loop


def test_auto_precision_results_are_not_reused_where_it_resolves_otherwise(tmp_path, monkeypatch):
    import torch

    spec = RunSpec(Config(precision="auto", device="cpu"), "iapas", {})
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    with_bf16 = build_fingerprint(spec, SEGMENT_FIELDS)
    assert with_bf16["arithmetic"] == "bf16" and with_bf16["config"]["precision"] == "auto"
    check_or_record(tmp_path / "run", with_bf16)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})  # the same settings on a CPU without bf16
    with pytest.raises(Exception, match=r"settings \(arithmetic \"bf16\" -> \"fp32\"\)"):
        check_or_record(tmp_path / "run", build_fingerprint(spec, SEGMENT_FIELDS))
