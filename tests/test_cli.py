import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.cli import main
from cli_runner import error_lines, run
from conftest import write_rgb




def test_segment_folder_writes_every_output(capsys, weights_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")
    assert code == 0, err
    for stem in ("a.png", "b.jpg", "sub/c.bmp"):
        for suffix in (".npy", "_map.png", "_overlay.png", ".json"):
            assert (out / f"{stem}{suffix}").exists()
    record = json.loads((out / "a.png.json").read_text())
    heat = np.load(out / "a.png.npy")
    assert heat.shape == (record["height"], record["width"]) == (96, 128)
    assert record["prompts"] == ["abnormal", "defect"]
    assert set(record["timings_s"]) == {"detection", "nms", "size_filter", "masking", "scoring"}
    assert record["image_score"] == pytest.approx(float(heat.max()), abs=1e-6)
    png = np.asarray(Image.open(out / "a.png_map.png"))
    assert png.dtype == np.uint8 and np.array_equal(png, np.round(heat * 255).astype(np.uint8))
    assert "3 images: 3 segmented, 0 skipped" in err
    assert "RANDOM WEIGHTS (built by `iapas weights make-demo`" in err


def test_an_image_without_boxes_writes_a_zero_map(capsys, weights_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", image_folder / "a.png", "-o", out, "--weights", weights_dir, "--no-progress",
                       "--size-threshold", "0")
    assert code == 0, err
    record = json.loads((out / "a.png.json").read_text())
    assert record["boxes"] == [] and record["image_score"] == 0.0
    assert not np.load(out / "a.png.npy").any()


def test_second_run_resumes_and_does_no_work(capsys, weights_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    assert run(capsys, "segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")[0] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    (out / "b.jpg.json").unlink()  # as if the run had stopped while writing b
    code, _, err = run(capsys, "segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")
    assert code == 0 and "3 images: 1 segmented, 2 skipped" in err
    run_files = ("b", "iapas-", "summary.csv", "report.html")  # the run's summary and report gain b's row
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in stamps.items() if not name.startswith(run_files))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    code, _, err = run(capsys, "segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")
    assert "0 segmented, 3 skipped" in err
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in stamps.items() if not name.startswith("iapas-"))
    code, _, err = run(capsys, "segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress", "--overwrite")
    assert "3 segmented, 0 skipped" in err


def test_batch_with_a_corrupt_image_finishes_the_others(capsys, weights_dir, image_folder, tmp_path):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", image_folder, "-o", out, "--weights", weights_dir, "--no-progress")
    assert code == 1
    [line] = error_lines(err)
    assert line.startswith("iapas: error: ") and str(image_folder / "broken.png") in line
    assert "4 images: 3 segmented, 0 skipped (already done), 1 failed" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*.json")) == ["a.png.json", "b.jpg.json", "sub/c.bmp.json"]


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.png", "image not found"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no images"),
])
def test_bad_paths_exit_2_with_one_line(capsys, weights_dir, tmp_path, make, message):
    code, _, err = run(capsys, "segment", make(tmp_path), "-o", tmp_path / "o", "--weights", weights_dir)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_non_image_file_fails_with_one_line(capsys, weights_dir, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    code, _, err = run(capsys, "segment", text, "-o", tmp_path / "o", "--weights", weights_dir, "--no-progress")
    assert code == 1
    assert error_lines(err) == [f"iapas: error: not an image file (or an unsupported format): {text}"]


def test_missing_weights_dir(capsys, image_folder, tmp_path):
    code, _, err = run(capsys, "segment", image_folder, "-o", tmp_path / "o", "--weights", tmp_path / "nowhere")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "no detector weights in" in err and "grounding-dino-tiny" in err and "make-demo" in err


@pytest.mark.parametrize("mode, note", [
    ("L", "greyscale image replicated to RGB"),
    ("RGBA", "alpha channel dropped"),
    ("I;16", "16-bit grey image scaled to 8-bit by value/257 (the full 16-bit range)"),
])
def test_grey_rgba_and_16_bit_images_are_converted_with_a_note(capsys, weights_dir, tmp_path, mode, note):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(1000, 4000, (60, 80), dtype=np.uint16))
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 256, (60, 80), dtype=np.uint8))
    else:
        image = Image.fromarray(rng.integers(0, 256, (60, 80, 4), dtype=np.uint8), "RGBA")
    assert image.mode == mode
    path = tmp_path / "odd.png"
    image.save(path)
    code, _, err = run(capsys, "segment", path, "-o", tmp_path / "o", "--weights", weights_dir, "--no-progress")
    assert code == 0, err
    assert f"note: {path}: {note}" in err
    assert np.load(tmp_path / "o" / "odd.png.npy").shape == (60, 80)


def test_huge_image_is_refused(capsys, weights_dir, tmp_path):
    path = write_rgb(tmp_path / "big.png", 200, 300)
    config = tmp_path / "c.yaml"
    config.write_text("max_image_pixels: 50000\n")
    code, _, err = run(capsys, "segment", path, "-o", tmp_path / "o", "--weights", weights_dir, "--config", config, "--no-progress")
    assert code == 1
    assert "image too large: " in err and "300x200" in err and "Traceback" not in err


def test_bad_config_is_one_line(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[detection]\nbox_treshold = 0.3\n")
    code, _, err = run(capsys, "config", "show", "--config", config)
    assert code == 2 and err.strip() == (
        "iapas: error: unknown setting detection.box_treshold (known: backend, box_clamp, box_threshold, caption_format, input_size, int8, "
        "max_boxes, max_text_tokens, phrase_rule, refinement_eps, runtime, text_threshold, weights)"
    )


def test_config_show_round_trips(capsys, tmp_path):
    import yaml
    from iapas.config import config_from_dict

    code, out, _ = run(capsys, "config", "show", "--device", "cpu")
    data = yaml.safe_load(out)
    assert code == 0 and data["device"] == "cpu"
    assert data["detection"]["box_threshold"] == 0.2 and data["filtering"] == {"nms_iou": 0.5, "size_threshold": 0.8, "size_rule": "calibrated"}
    assert config_from_dict(data).to_dict() == data


def test_weights_verify(capsys, weights_dir, tmp_path):
    code, out, _ = run(capsys, "weights", "verify", weights_dir)
    assert code == 0 and "sam-demo" in out and "present" in out
    wrong = tmp_path / "w"
    wrong.mkdir()
    (wrong / "sam_vit_b_01ec64.pth").write_bytes(b"x" * 10)
    code, out, err = run(capsys, "weights", "verify", wrong)
    assert code == 2 and "wrong size" in out and "1 checkpoint(s) failed verification: sam-vit-b" in err
    code, _, err = run(capsys, "weights", "verify", tmp_path / "absent")
    assert code == 2 and "weights dir not found" in err


def test_verify_entry_checks_sha256(tmp_path):
    import hashlib
    from iapas.weights.manifest import WeightEntry, verify_entry

    (tmp_path / "m.pth").write_bytes(b"model bytes")
    digest = hashlib.sha256(b"model bytes").hexdigest()
    entry = WeightEntry("m", "sam", "segmenter", "pth", "m.pth", "here", size=11, sha256=digest)
    assert verify_entry(entry, tmp_path).status == "ok"
    tampered = WeightEntry("m", "sam", "segmenter", "pth", "m.pth", "here", size=11, sha256="0" * 64)
    assert verify_entry(tampered, tmp_path).status == "wrong sha256"


def test_console_script_entry_point(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "iapas", "segment", tmp_path / "nope.png"], capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"iapas: error: image not found: {tmp_path / 'nope.png'}"


def test_bench_reports_every_stage_of_the_chosen_method(capsys, weights_dir):
    image = str(Path(__file__).parent.parent / "examples" / "images" / "tile_crack.png")
    assert main(["bench", image, "--weights", str(weights_dir), "--repeat", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for stage in ("detection", "nms", "size_filter", "masking", "scoring", "total", "model loading"):
        assert stage in out
    assert main(["bench", image, "--weights", str(weights_dir), "--method", "winclip", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "window_scoring" in out and "upsampling" in out and "detection" not in out
    assert main(["bench", "missing.png", "--weights", str(weights_dir)]) == 2
    assert capsys.readouterr().err.strip() == "iapas: error: image not found: missing.png"
    assert main(["bench", image, "--weights", str(weights_dir), "--method", "winclip", "--prompt", "crack"]) == 2
    assert "--prompt is IAP-AS's detector prompt word; the CLIP methods take --category NAME" in capsys.readouterr().err


def test_bench_throughput_against_the_naive_loop_writes_json(capsys, weights_dir, tmp_path):
    report_path = tmp_path / "bench.json"
    assert main(["bench", "--images", "2", "--size", "96", "--warmup", "0", "--vs-naive", "--weights", str(weights_dir),
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["mode"] == "throughput" and report["image_size"] == [96, 96]
    assert report["iapas"]["images"] == report["naive"]["images"] == 2
    assert set(report["naive"]["stages_ms"]) == {"object_detection", "defect_detection", "masking", "scoring"}
    assert {"detection", "masking", "scoring"} <= set(report["iapas"]["stages_ms"])
    assert report["speedup_vs_naive"] == pytest.approx(report["iapas"]["images_per_s"] / report["naive"]["images_per_s"])
    assert "speed-up vs the naive loop" in capsys.readouterr().out
    loose = ["bench", "--images", "2", "--size", "96", "--warmup", "0", "--vs-naive", "--weights", str(weights_dir),
             "--box-threshold", "0", "--text-threshold", "0", "--size-threshold", "1", "--json", str(report_path),
             "--precision", "fp32"]  # equal arithmetic in both contenders (the default recipe's auto is bf16 on a bf16 CPU)
    assert main(loose) == 0
    uncapped = json.loads(report_path.read_text())
    assert uncapped["iapas"]["boxes_per_image"] > 1 and uncapped["naive"]["boxes_per_image"] > 1
    assert main([*loose, "--max-boxes", "1"]) == 0
    capped = json.loads(report_path.read_text())
    assert capped["config"]["detection"]["max_boxes"] == 1  # both contenders keep at most one box per image
    assert capped["iapas"]["boxes_per_image"] == 1 and capped["naive"]["boxes_per_image"] <= 1
    # under the official recipe both ask the same captions and the same object tag: the same boxes, the same load
    assert main([*loose, "--recipe", "official"]) == 0
    official = json.loads(report_path.read_text())
    assert official["config"]["calibration"]["tags"] == ["object"]
    assert official["iapas"]["boxes_per_image"] == official["naive"]["boxes_per_image"] > 0
    # without the size filter the default recipe and the naive loop mask the same boxes too (the cap, then NMS)
    assert main([*loose, "--no-size-filter", "--max-boxes", "3"]) == 0
    unfiltered = json.loads(report_path.read_text())
    assert unfiltered["iapas"]["boxes_per_image"] == unfiltered["naive"]["boxes_per_image"] > 0
    assert "size_filter" not in unfiltered["iapas"]["stages_ms"]
    assert unfiltered["precision"] == {"iapas": "fp32", "naive": "fp32"}
    assert main([*loose, "--no-size-filter", "--recipe", "official"]) == 2  # it would drop only iapas's object pass
    assert "would drop iapas's object question but not the naive loop's" in capsys.readouterr().err
    assert main([*loose, "--calibration", "c.json"]) == 2
    assert "drop --calibration (the naive loop has no calibration)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's one-line usage error
        main(["bench", "--images", "2", "--max-boxes", "-1", "--weights", str(weights_dir)])
    assert exit_info.value.code == 2 and "--max-boxes: must be 0 or more, got -1" in capsys.readouterr().err
    assert main(["bench", "--images", "2", "--vs-naive", "--method", "winclip", "--weights", str(weights_dir)]) == 2
    assert main(["bench", "--weights", str(weights_dir)]) == 2
    assert "give an IMAGE, or --images N" in capsys.readouterr().err
