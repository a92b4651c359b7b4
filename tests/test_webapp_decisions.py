"""The web app's decisions: verdict at a threshold, mask and regions, demo banner, learned checkpoints, several images,
through the handlers, gradio_client and a headless browser."""
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iapas import Config
from iapas.errors import IapasError
from iapas.types import Boxes, Masks, Result
from iapas.webapp import ModelCache, SegmentRequest, segment_request
from iapas.webapp.decisions import decide_view, demo_banner, learned_checkpoints, segment_batch
from browser import chromium_paths, headless_chromium
from test_webapp import EXAMPLE, example_pixels, served_app  # noqa: F401 - the app on a local port, with this module's cache


@pytest.fixture(scope="module")
def cache(weights_dir):
    return ModelCache(Config(weights_dir=str(weights_dir)))


@pytest.fixture(scope="module")
def faprompt_checkpoint(weights_dir, backbone):
    from iapas.methods.faprompt.model import FAPrompt

    torch.manual_seed(5)
    folder = Path(weights_dir) / "faprompt"
    folder.mkdir(exist_ok=True)
    return FAPrompt(backbone).save(folder / "faprompt_prompts.pt")


def hand_result() -> Result:
    values = np.zeros((30, 40), np.float32)
    values[5:10, 5:15] = 0.9
    values[20:22, 30:33] = 0.6
    return Result(values, Boxes.empty(), Masks.empty(30, 40), ())


def test_decide_view_at_a_threshold_names_files_after_the_image(tmp_path):
    pixels = np.full((30, 40, 3), 200, np.uint8)
    view = decide_view(hand_result(), pixels, 0.5, 0, "part_07.png", tmp_path)
    assert view.decision.verdict == "anomalous" and "ANOMALOUS" in view.verdict_html
    assert [row[1] for row in view.regions_table] == [50, 6]
    assert view.mask.shape == (30, 40) and set(np.unique(view.mask)) == {0, 255}
    assert [Path(f).name for f in view.files] == ["part_07.png_decision.png", "part_07.png_mask.png"]
    assert view.picture.shape[1] == 40 and view.picture.shape[0] > 30
    assert decide_view(hand_result(), pixels, 0.95, 0, "p.png", tmp_path).decision.verdict == "normal"
    assert decide_view(hand_result(), pixels, 0.5, 20, "p.png", tmp_path).decision.regions[0].area_px == 50
    undecided = decide_view(hand_result(), pixels, None, 0, "", tmp_path)
    assert undecided.decision.verdict == "undecided" and undecided.mask is None
    with pytest.raises(IapasError, match=r"score threshold must be in \[0, 1\]"):
        decide_view(hand_result(), pixels, 1.5)


def test_demo_banner(weights_dir, tmp_path):
    banner = demo_banner(Config(weights_dir=str(weights_dir)), ["iapas", "winclip"])
    assert "RANDOM DEMO WEIGHTS" in banner and "sam_demo.pth" in banner and "clip-demo" in banner
    assert demo_banner(Config(weights_dir=str(tmp_path / "empty")), ["iapas", "winclip"]) == ""


def test_downloads_are_named_after_the_input_image(cache):
    response = segment_request(cache, example_pixels(), SegmentRequest(prompts="scratch", name="washer_17.png"))
    assert [Path(f).name for f in response.files] == ["washer_17.png.npy", "washer_17.png_map.png",
                                                      "washer_17.png_overlay.png", "washer_17.png.json"]


def test_learned_method_with_a_checkpoint_from_the_weights_folder(cache, faprompt_checkpoint, backbone):
    from iapas.methods.faprompt.model import FAPrompt

    assert str(faprompt_checkpoint) in learned_checkpoints(cache.config)
    pixels = example_pixels()
    response = segment_request(cache, pixels, SegmentRequest(method="faprompt", checkpoint=str(faprompt_checkpoint)))
    expected = FAPrompt.load(faprompt_checkpoint, backbone).segment(pixels)
    np.testing.assert_allclose(response.result.anomaly_map, expected.anomaly_map, atol=1e-6)
    with pytest.raises(IapasError, match="only applies to the learned methods"):
        segment_request(cache, pixels, SegmentRequest(method="winclip", checkpoint=str(faprompt_checkpoint)))


def test_several_images_at_once(cache, tmp_path):
    good = tmp_path / "a.png"
    Image.open(EXAMPLE).save(good)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows, gallery, files = segment_batch(cache, [str(good), str(tmp_path / "broken.png")], SegmentRequest(method="winclip"), 0.0)
    assert rows[0][:2] == ["a.png", "anomalous"] and rows[1][:2] == ["broken.png", "failed"]
    assert len(gallery) == 1 and gallery[0][1].startswith("a.png: anomalous")
    assert {Path(f).name for f in files} >= {"a.png.json", "a.png_decision.png", "a.png_mask.png"}


def test_verdict_and_banner_through_gradio_client(faprompt_checkpoint, served_app):  # the checkpoint exists before the page
    from gradio_client import Client, handle_file

    client = Client(served_app, verbose=False)
    *_, status = client.predict(handle_file(str(EXAMPLE)), "faprompt", "", None, "", 0.2, 0.2, 0.8,
                                str(faprompt_checkpoint), None, api_name="/segment")
    assert status.startswith("0 boxes, image score"), status
    score = float(status.split("image score ")[1].split(",")[0])
    verdict, picture, mask, regions, files = client.predict(0.0, 0, api_name="/decide")
    assert "ANOMALOUS" in verdict and Image.open(mask).size == Image.open(EXAMPLE).size
    assert len(regions["data"]) >= 1
    verdict, *_ = client.predict(min(1.0, score + 0.01), 0, api_name="/decide")
    assert "NORMAL" in verdict
    with urllib.request.urlopen(served_app + "config", timeout=30) as answer:  # what the page shows, as the browser gets it
        assert "RANDOM DEMO WEIGHTS" in answer.read().decode()
    rows, gallery, downloads, counts = client.predict([handle_file(str(EXAMPLE))], "winclip", "", None, 0.0, 0,
                                                      api_name="/segment_many")
    assert rows["data"][0][:2] == ["washer_scratch.png", "anomalous"] and counts.startswith("1 anomalous")


@pytest.mark.skipif(chromium_paths() is None, reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_verdict_and_banner_in_a_headless_browser(faprompt_checkpoint, served_app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium("1400,2400")
    try:
        driver.get(served_app)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "segment-button"))
        assert "RANDOM DEMO WEIGHTS" in driver.find_element(By.ID, "demo-banner").text
        driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(EXAMPLE))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))
        driver.find_element(By.ID, "segment-button").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "verdict"))
        assert driver.find_element(By.ID, "verdict").text in ("ANOMALOUS", "NORMAL")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#decision img"))
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
