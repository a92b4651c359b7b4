"""Decisions over a run: per-image JSON, masks and overlays, summary.csv (killed, resumed, shared), report.html
in headless Chromium, exit statuses and the thresholds-file refusals on the command line."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import stub_methods  # noqa: F401 - registers test-brightness (dark pixels score high)
from cli_runner import error_lines, run
from iapas.decisions.summary import COLUMNS
from iapas.methods import METHODS
from browser import chromium_paths, headless_chromium

TESTS = Path(__file__).resolve().parent
WORKER = """
import sys
sys.path.insert(0, {tests!r})
import test_decision_runs  # registers test-slow
from iapas.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Slow(stub_methods.BrightnessMethod):
    """The brightness method at a pace a test can interrupt or share."""

    def segment(self, image):
        time.sleep(0.1)
        return super().segment(image)


if "test-slow" not in METHODS:
    METHODS.register("test-slow")(lambda config, ablate: Slow())


def part(path: Path, defect: bool, seed: int = 0) -> Path:
    """A bright 40x48 part (scores about 0.1); a defect is a dark 6x8 patch (scores about 0.92)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(230 + rng.integers(-3, 4, (40, 48, 3)), 0, 255).astype(np.uint8)
    if defect:
        pixels[10:16, 20:28] = 20
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def parts(tmp_path) -> Path:
    folder = tmp_path / "parts"
    for index in range(3):
        part(folder / f"good_{index}.png", False, index)
    part(folder / "bad_0.png", True)
    part(folder / "sub" / "bad_1.png", True, 7)
    return folder


def summary_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(COLUMNS)
    assert all(len(row) == len(COLUMNS) for row in rows)
    return [dict(zip(COLUMNS, row)) for row in rows[1:]]


def test_segment_decides_every_image(capsys, parts, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", parts, "-o", out, "--method", "test-brightness", "--no-progress",
                       "--image-threshold", 0.5, "--min-defect-area", 10)
    assert code == 0, err
    record = json.loads((out / "bad_0.png.json").read_text())
    assert record["verdict"] == "anomalous" and record["image_score"] == pytest.approx(1 - 20 / 255, abs=1e-5)
    assert record["thresholds"]["image"] == 0.5 and record["thresholds"]["image_source"] == "manual"
    assert record["thresholds"]["pixel"] == 0.5 and record["min_defect_area"] == 10
    assert [(r["area_px"], r["box"]) for r in record["regions"]] == [(48, [20, 10, 28, 16])]
    assert record["regions"][0]["area_fraction"] == pytest.approx(48 / (40 * 48))
    mask = np.asarray(Image.open(out / "bad_0.png_mask.png"))
    assert mask.shape == (40, 48) and set(np.unique(mask)) == {0, 255} and int((mask == 255).sum()) == 48
    assert json.loads((out / "good_1.png.json").read_text())["verdict"] == "normal"
    overlay = np.asarray(Image.open(out / "bad_0.png_overlay.png"))
    assert overlay.shape[1] == 48 and overlay.shape[0] > 40  # the verdict and colour bar strip below the picture
    rows = summary_rows(out)
    assert [row["output"] for row in rows] == ["bad_0.png", "good_0.png", "good_1.png", "good_2.png", "sub/bad_1.png"]
    assert [row["verdict"] for row in rows] == ["anomalous", "normal", "normal", "normal", "anomalous"]
    assert rows[0]["regions"] == "1" and rows[0]["defect_area_px"] == "48"
    assert (out / "report.html").is_file() and (out / "thumbnails" / "sub" / "bad_1.png.jpg").is_file()


def test_fail_on_anomaly_and_which_exit_wins(capsys, parts, tmp_path):
    code, _, err = run(capsys, "segment", parts, "-o", tmp_path / "a", "--method", "test-brightness", "--no-progress",
                       "--image-threshold", 0.5, "--fail-on-anomaly")
    assert code == 3 and "2 image(s) judged anomalous" in err
    good = tmp_path / "good"
    part(good / "g.png", False)
    assert run(capsys, "segment", good, "-o", tmp_path / "b", "--method", "test-brightness", "--no-progress",
               "--image-threshold", 0.5, "--fail-on-anomaly")[0] == 0
    (parts / "broken.png").write_bytes(b"not a png")
    code, _, err = run(capsys, "segment", parts, "-o", tmp_path / "c", "--method", "test-brightness", "--no-progress",
                       "--image-threshold", 0.5, "--fail-on-anomaly")
    assert code == 1  # an image that failed was not inspected: exit 1 wins over 3
    assert len(summary_rows(tmp_path / "c")) == 5


def test_without_thresholds_the_verdict_is_undecided_and_no_mask_is_written(capsys, parts, tmp_path):
    out = tmp_path / "out"
    assert run(capsys, "segment", parts, "-o", out, "--method", "test-brightness", "--no-progress")[0] == 0
    assert json.loads((out / "bad_0.png.json").read_text())["verdict"] == "undecided"
    assert not (out / "bad_0.png_mask.png").exists()
    assert {row["verdict"] for row in summary_rows(out)} == {"undecided"}


def test_mebin_per_folder(capsys, parts, tmp_path):
    out = tmp_path / "out"
    assert run(capsys, "segment", parts, "-o", out, "--method", "test-brightness", "--no-progress", "--binarize", "mebin")[0] == 0
    record = json.loads((out / "bad_0.png.json").read_text())
    assert record["thresholds"]["pixel_source"] == "mebin" and record["verdict"] == "anomalous"
    assert record["thresholds"]["mebin"]["search_range_8bit"][1] == 235  # the folder's highest peak, 1 - 20/255
    assert json.loads((out / "good_0.png.json").read_text())["verdict"] == "normal"
    assert (out / "good_0.png_mask.png").is_file()


def test_roi_ignores_scores_outside(capsys, parts, tmp_path):
    roi = np.full((40, 48), 255, np.uint8)
    roi[:20, :] = 0  # the defect patch (rows 10-15) lies outside
    Image.fromarray(roi).save(tmp_path / "roi.png")
    out = tmp_path / "out"
    assert run(capsys, "segment", parts, "-o", out, "--method", "test-brightness", "--no-progress",
               "--image-threshold", 0.5, "--roi", tmp_path / "roi.png")[0] == 0
    record = json.loads((out / "bad_0.png.json").read_text())
    assert record["verdict"] == "normal" and record["image_score"] < 0.2 and record["roi"]["sha256"]


@pytest.mark.parametrize("options, message", [
    (["--thresholds", "absent.json"], "thresholds file not found: absent.json"),
    (["--roi", "absent.png"], "region-of-interest mask not found: absent.png"),
    (["--binarize", "mebin", "--pixel-threshold", "0.3"], "exclude each other"),
    (["--image-threshold", "0.5", "--recipe", "official", "--method", "iapas"], "min-max normalises every map per image"),
])
def test_decision_option_refusals(capsys, parts, tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "segment", parts, "-o", tmp_path / "out", "--method", "test-brightness", *options)
    assert code == 2 and len(error_lines(err)) == 1 and message in error_lines(err)[0] and "Traceback" not in err


def test_threshold_command_and_its_file_in_segment(capsys, tmp_path):
    normal = tmp_path / "normal"
    for index in range(9):
        part(normal / f"n{index}.png", False, index)
    code, _, err = run(capsys, "threshold", normal, "--method", "test-brightness", "-o", tmp_path / "t.json", "--no-progress")
    assert code == 2 and "needs at least 10 normal images" in error_lines(err)[0] and "got 9" in err
    part(normal / "n9.png", False, 9)
    code, _, err = run(capsys, "threshold", normal, "--method", "test-brightness", "-o", tmp_path / "t.json", "--no-progress",
                       "--image-margin-sd", 2)
    assert code == 0, err
    saved = json.loads((tmp_path / "t.json").read_text())
    scores = np.array(saved["fitted_on"]["image_scores"])
    assert saved["image_threshold"]["value"] == pytest.approx(scores.max() + 2 * scores.std(ddof=1), abs=1e-5)
    assert saved["method"] == "test-brightness" and saved["image_threshold"]["rule"]["margin_sd"] == 2
    part(tmp_path / "line" / "bad.png", True)
    code, _, err = run(capsys, "segment", tmp_path / "line", "-o", tmp_path / "out", "--method", "test-brightness",
                       "--thresholds", tmp_path / "t.json", "--no-progress")
    assert code == 0 and json.loads((tmp_path / "out" / "bad.png.json").read_text())["verdict"] == "anomalous"
    code, _, err = run(capsys, "segment", tmp_path / "line", "-o", tmp_path / "out2", "--method", "test-brightness",
                       "--category", "bolt", "--thresholds", tmp_path / "t.json")
    assert code == 2 and "was made for other settings (settings.category null -> \"bolt\")" in error_lines(err)[0]


def many_parts(folder: Path, count: int) -> Path:
    """p00.png ... : every fifth part (p00, p05, ...) has a defect."""
    for index in range(count):
        part(folder / f"p{index:02d}.png", index % 5 == 0, index)
    return folder


def worker(tmp_path: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS)))
    return script


SLOW_OPTIONS = ("--method", "test-slow", "--no-progress", "--image-threshold", "0.5")


def slow_run(script: Path, images: Path, out: Path) -> subprocess.Popen:
    """The segment command in another process (importing iapas there takes a while on a busy machine)."""
    return subprocess.Popen([sys.executable, str(script), "segment", str(images), "-o", str(out), *SLOW_OPTIONS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def wait_for_rows(out: Path, rows: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "summary.csv").is_file() and len((out / "summary.csv").read_text().splitlines()) > rows:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {rows} summary rows in time: {process.stderr.read().decode() if process.poll() is not None else ''}")


def test_killed_run_leaves_a_valid_summary_and_a_resume_completes_it(capsys, tmp_path):
    images, out = many_parts(tmp_path / "many", 30), tmp_path / "out"
    process = slow_run(worker(tmp_path), images, out)
    wait_for_rows(out, 4, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    rows = summary_rows(out)
    assert 4 <= len(rows) < 30
    for row in rows:  # every row is whole and names a finished image
        assert (out / f"{row['output']}.json").is_file() and row["verdict"] in ("normal", "anomalous")
    assert len({row["output"] for row in rows}) == len(rows)
    assert run(capsys, "segment", images, "-o", out, *SLOW_OPTIONS)[0] == 0  # the resume
    rows = summary_rows(out)
    assert [row["output"] for row in rows] == [f"p{index:02d}.png" for index in range(30)]
    assert [row["verdict"] for row in rows] == ["anomalous" if index % 5 == 0 else "normal" for index in range(30)]


def test_two_runs_sharing_a_folder_give_one_row_per_image(capsys, tmp_path):
    images, out = many_parts(tmp_path / "many", 24), tmp_path / "out"
    other = slow_run(worker(tmp_path), images, out)
    wait_for_rows(out, 1, other)  # the other run is under way: from here both work in the folder
    code, _, err = run(capsys, "segment", images, "-o", out, *SLOW_OPTIONS)
    assert code == 0 and other.wait(timeout=120) == 0
    assert "in progress in another run" in err or "skipped" in err
    outputs = [row["output"] for row in summary_rows(out)]
    assert outputs == [f"p{index:02d}.png" for index in range(24)]
    assert [row["verdict"] for row in summary_rows(out)] == ["anomalous" if i % 5 == 0 else "normal" for i in range(24)]


@pytest.mark.skipif(chromium_paths() is None, reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_report_in_a_headless_browser(capsys, parts, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from iapas.decisions.report import write_report

    out = tmp_path / "out"
    (parts / "broken.png").write_bytes(b"not a png")
    assert run(capsys, "segment", parts, "-o", out, "--method", "test-brightness", "--no-progress",
               "--image-threshold", 0.5)[0] == 1
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched when viewed
    write_report(out, None, [("broken.png", "cannot read broken.png")], page_size=2)  # three pages of two
    driver = headless_chromium()
    try:
        driver.get((out / "report.html").as_uri())
        counts = {key: driver.find_element(By.ID, f"count-{key}").text for key in ("anomalous", "normal", "undecided", "failed")}
        assert counts == {"anomalous": "2", "normal": "3", "undecided": "0", "failed": "1"}
        seen = []
        for _ in range(3):
            cards = driver.find_elements(By.CSS_SELECTOR, "#gallery .card")
            seen += [card.get_attribute("data-name") for card in cards]
            for image in driver.find_elements(By.CSS_SELECTOR, "#gallery img"):
                driver.execute_script("arguments[0].scrollIntoView()", image)
            WebDriverWait(driver, 30).until(lambda d: all(  # lazy thumbnails load once in view
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
                for image in d.find_elements(By.CSS_SELECTOR, "#gallery img")))
            driver.find_element(By.ID, "next").click()
        assert sorted(seen) == ["bad_0.png", "good_0.png", "good_1.png", "good_2.png", "sub/bad_1.png"]
        assert set(seen[:2]) == {"bad_0.png", "sub/bad_1.png"}  # highest scores first
        Select(driver.find_element(By.ID, "filter")).select_by_visible_text("anomalous")
        cards = driver.find_elements(By.CSS_SELECTOR, "#gallery .card")
        assert {card.get_attribute("data-name") for card in cards} == {"bad_0.png", "sub/bad_1.png"}
        cards[0].click()
        full = driver.find_elements(By.CSS_SELECTOR, "#viewer img")
        assert [image.get_attribute("alt") for image in full] == ["overlay", "map", "mask"]
        WebDriverWait(driver, 30).until(lambda d: all(
            d.execute_script("return arguments[0].naturalWidth", image) == 48 for image in full))
        assert "cannot read broken.png" in driver.find_element(By.ID, "failures").text
    finally:
        driver.quit()


def test_thresholds_file_fitted_without_a_roi_is_refused_with_one(capsys, tmp_path):
    normal = tmp_path / "normal"
    for index in range(10):
        part(normal / f"n{index}.png", False, index)
    assert run(capsys, "threshold", normal, "--method", "test-brightness", "-o", tmp_path / "t.json", "--no-progress")[0] == 0
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(tmp_path / "roi.png")
    code, _, err = run(capsys, "segment", normal, "-o", tmp_path / "out", "--method", "test-brightness",
                       "--thresholds", tmp_path / "t.json", "--roi", tmp_path / "roi.png")
    assert code == 2 and "was fitted on whole images" in error_lines(err)[0]
    assert run(capsys, "threshold", normal, "--method", "test-brightness", "-o", tmp_path / "r.json", "--no-progress",
               "--roi", tmp_path / "roi.png")[0] == 0
    code, _, err = run(capsys, "segment", normal, "-o", tmp_path / "out", "--method", "test-brightness",
                       "--thresholds", tmp_path / "r.json", "--roi", tmp_path / "roi.png", "--no-progress")
    assert code == 0, err
    assert {row["verdict"] for row in summary_rows(tmp_path / "out")} == {"normal"}


def test_iapas_decides_by_its_kept_boxes_by_default(capsys, weights_dir, tmp_path):
    folder = tmp_path / "one"
    part(folder / "p.png", True)
    out = tmp_path / "out"
    assert run(capsys, "segment", folder, "-o", out, "--weights", weights_dir, "--no-progress")[0] == 0
    record = json.loads((out / "p.png.json").read_text())
    anomaly_map = np.load(out / "p.png.npy")
    assert record["thresholds"]["image"] == 0.0 and record["thresholds"]["image_source"].startswith("iapas: any kept box")
    assert record["verdict"] == ("anomalous" if record["boxes"] else "normal")
    mask = np.asarray(Image.open(out / "p.png_mask.png")) == 255
    np.testing.assert_array_equal(mask, anomaly_map > 0)  # the union of the kept boxes' masks
    assert record["defect_area_px"] == int(mask.sum())
