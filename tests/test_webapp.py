"""The web app: its handlers directly, its API through gradio_client, and its page in a headless browser."""
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas import Config, Pipeline
from iapas.errors import ConfigError, IapasError
from iapas.webapp import ModelCache, SegmentRequest, segment_request

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "images" / "washer_scratch.png"


@pytest.fixture(scope="module")
def cache(weights_dir):
    return ModelCache(Config(weights_dir=str(weights_dir)))


def example_pixels() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLE).convert("RGB"))


def test_segment_request_matches_the_pipeline_and_writes_files(cache, pipeline):
    pixels = example_pixels()
    response = segment_request(cache, pixels, SegmentRequest(prompts="scratch, crack", box_threshold=0.3))
    expected = Pipeline(Config(weights_dir=cache.config.weights_dir).updated({"detection.box_threshold": 0.3}),
                        pipeline.detector, pipeline.segmenter).segment(pixels, prompts=["scratch", "crack"])
    np.testing.assert_array_equal(response.result.anomaly_map, expected.anomaly_map)
    assert len(response.boxes_table) == len(expected.boxes) > 0
    assert [row[0] for row in response.boxes_table] == list(expected.boxes.phrases)
    assert response.overlay.shape == pixels.shape and response.heat.shape == pixels.shape
    assert [Path(f).name for f in response.files] == ["result.npy", "result_map.png", "result_overlay.png", "result.json"]
    np.testing.assert_array_equal(np.load(response.files[0]), expected.anomaly_map)
    assert {row[0] for row in response.timings_table} == {"detection", "nms", "size_filter", "masking", "scoring"}


def test_models_load_once_across_requests(cache):
    first = cache.iapas_pipeline()
    segment_request(cache, example_pixels(), SegmentRequest(prompts="dent", size_threshold=0.5))
    segment_request(cache, example_pixels(), SegmentRequest(prompts="hole", text_threshold=0.4))
    assert cache.iapas_pipeline() is first
    assert cache.loaded() == [("iapas",)]


@pytest.mark.parametrize("request_, message", [
    (SegmentRequest(box_threshold=1.5), "box threshold must be in [0, 1], got 1.5"),
    (SegmentRequest(method="nope"), "unknown method 'nope'"),
    (SegmentRequest(method="winclip", prompts="scratch"), "prompts and calibration files only apply to iapas"),
    (SegmentRequest(calibration_path="/nonexistent/calib.json"), "calibration file not found"),
])
def test_bad_requests_are_one_line_errors(cache, request_, message):
    with pytest.raises(IapasError, match=message.replace("[", r"\[").replace("]", r"\]")):
        segment_request(cache, example_pixels(), request_)


def test_no_image_is_an_error(cache):
    with pytest.raises(IapasError, match="no image"):
        segment_request(cache, None, SegmentRequest())
    assert issubclass(ConfigError, IapasError)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(cache):
    """The app on a free local port; closed when the module's tests are done."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from iapas.webapp import build_app

    app = build_app(cache=cache)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_api_through_gradio_client(served_app, cache, pipeline):
    from gradio_client import Client, handle_file

    client = Client(served_app, verbose=False)
    overlay, heat, boxes, timings, files, status = client.predict(
        handle_file(str(EXAMPLE)), "iapas", "scratch", None, "", 0.2, 0.2, 0.8, api_name="/segment")
    expected = pipeline.segment(example_pixels(), prompts=["scratch"])
    assert status.startswith(f"{len(expected.boxes)} boxes, image score {expected.image_score:.3f}")
    assert len(boxes["data"]) == len(expected.boxes)
    width, height = Image.open(EXAMPLE).size
    assert Image.open(overlay).size[0] == width and Image.open(overlay).size[1] > height  # the verdict and colour bar below
    saved = [f for f in files if f.endswith(".npy")]
    np.testing.assert_allclose(np.load(saved[0]), expected.anomaly_map, atol=1e-6)
    *_, status = client.predict(handle_file(str(EXAMPLE)), "winclip", "scratch", None, "", 0.2, 0.2, 0.8,
                                api_name="/segment")
    assert status == "iapas: error: prompts and calibration files only apply to iapas, not winclip"


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(chromium_paths() is None, reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_page_in_a_headless_browser(served_app, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(argument)
    options.binary_location = browser
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(served_app)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "segment-button"))
        assert not driver.find_elements(By.CSS_SELECTOR, "#overlay img")  # nothing before a segmentation
        driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(EXAMPLE))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))
        driver.find_element(By.ID, "segment-button").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"))
        WebDriverWait(driver, 30).until(lambda d: "boxes, image score" in d.find_element(By.ID, "status").text)
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_calibrate_tab_handler(cache, tmp_path):
    from iapas.webapp import calibrate_folder

    folder = tmp_path / "normal"
    folder.mkdir()
    for index in range(3):
        Image.open(EXAMPLE).save(folder / f"good_{index}.png")
    calibration, path = calibrate_folder(cache, str(folder), "washer", n_images=2)
    assert calibration.category == "washer" and len(calibration.normal_images) == 2
    assert calibration.p_final[:2] == ("abnormal", "defect") and set(calibration.tags) <= set(calibration.p_final)
    assert json.loads(Path(path).read_text())["p_final"] == list(calibration.p_final)
    with pytest.raises(IapasError, match="not a folder of normal images: /nonexistent"):
        calibrate_folder(cache, "/nonexistent", "washer")
    with pytest.raises(ConfigError, match="at least 1"):
        calibrate_folder(cache, str(folder), "washer", n_images=0)
