"""The web app equals the CLI on uploads, bounds its folders and models, and serves concurrent requests."""
import sys as _sys, pathlib as _pathlib; _sys.path.insert(0, str(_pathlib.Path(__file__).parent))
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas import Config, Pipeline
from iapas.errors import IapasError
from iapas.images import load_image
from iapas.webapp import ModelCache, SegmentRequest, calibrate_folder, segment_request
from iapas.webapp.handlers import ResultFolders
from test_webapp import EXAMPLE, free_port


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """A 16-bit grey PNG whose values an 8-bit clip would change, a text file, an empty file and a forged header."""
    folder = tmp_path_factory.mktemp("uploads")
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I;16")
    (folder / "notes.png").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    forged = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
              + png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b""))
    (folder / "forged.png").write_bytes(forged)
    return folder


@pytest.fixture(scope="module")
def cache(weights_dir):
    return ModelCache(Config(weights_dir=str(weights_dir)))


@pytest.fixture(scope="module")
def served(cache):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from iapas.webapp import build_app

    app = build_app(cache=cache)
    port = free_port()
    app.queue(default_concurrency_limit=6).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                                 quiet=True, show_error=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def predict(url: str, path: Path, method: str = "iapas", prompts: str = "scratch"):
    from gradio_client import Client, handle_file

    return Client(url, verbose=False).predict(handle_file(str(path)), method, prompts, None, "", 0.2, 0.2, 0.8,
                                              api_name="/segment")


def test_a_16_bit_upload_is_read_as_the_cli_reads_it(served, uploads, pipeline):
    *_, files, status = predict(served, uploads / "deep.png")
    assert not status.startswith("iapas: error"), status
    cli = pipeline.segment(load_image(uploads / "deep.png").pixels, prompts=["scratch"])  # the CLI's /257 rule
    web = np.load([f for f in files if f.endswith(".npy")][0])
    np.testing.assert_array_equal(web, cli.anomaly_map)


@pytest.mark.parametrize("name, message", [("notes.png", "not an image file"), ("empty.png", "not an image file"),
                                           ("forged.png", "image too large to decode safely")])
def test_bad_uploads_show_the_one_line_message_in_the_page(served, uploads, name, message):
    *_, status = predict(served, uploads / name)
    assert status.startswith("iapas: error: ") and message in status and "\n" not in status


def test_the_pixel_limit_applies_to_uploads(weights_dir):
    small = ModelCache(Config(weights_dir=str(weights_dir), max_image_pixels=1000))
    with pytest.raises(IapasError, match="image too large: .* above the limit"):
        segment_request(small, str(EXAMPLE), SegmentRequest(prompts="scratch"))


def test_concurrent_requests_all_succeed_with_one_answer(served, pipeline):
    expected = pipeline.segment(np.asarray(Image.open(EXAMPLE).convert("RGB")), prompts=["scratch"])
    answers, errors = [], []

    def ask():
        try:
            answers.append(predict(served, EXAMPLE))
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and len(answers) == 6
    for *_, files, status in answers:
        assert status.startswith(f"{len(expected.boxes)} boxes")
        np.testing.assert_allclose(np.load([f for f in files if f.endswith(".npy")][0]), expected.anomaly_map, atol=1e-6)


def test_many_requests_keep_a_bounded_number_of_result_folders(weights_dir, tmp_path):
    bounded = ModelCache(Config(weights_dir=str(weights_dir)), results=ResultFolders(tmp_path / "results", keep=3))
    for _ in range(7):
        response = segment_request(bounded, str(EXAMPLE), SegmentRequest(prompts="scratch"))
        assert all(Path(f).is_file() for f in response.files)  # the newest request's files are there to fetch
    assert len(list((tmp_path / "results").iterdir())) == 3
    bounded.results.clear()
    assert not list((tmp_path / "results").iterdir())


def test_one_clip_serves_every_category_and_the_cache_is_bounded(weights_dir, tmp_path):

    bounded = ModelCache(Config(weights_dir=str(weights_dir)), max_models=1,
                         results=ResultFolders(tmp_path / "r", keep=4))
    pixels = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    for category in ("screw", "bottle", "screw", "cable"):
        segment_request(bounded, pixels, SegmentRequest(method="winclip", category=category))
    assert bounded.loaded() == [("winclip",)]  # one CLIP, not one per category
    fresh = ModelCache(Config(weights_dir=str(weights_dir)), results=ResultFolders(tmp_path / "f", keep=2))
    again = segment_request(bounded, pixels, SegmentRequest(method="winclip", category="bottle")).result
    first = segment_request(fresh, pixels, SegmentRequest(method="winclip", category="bottle")).result
    np.testing.assert_allclose(again.anomaly_map, first.anomaly_map, atol=1e-6)
    segment_request(bounded, pixels, SegmentRequest(prompts="scratch"))
    assert bounded.loaded() == [("iapas",)]  # the least recently used model went


def test_calibrating_with_zero_images_is_refused_through_the_page(served, tmp_path):
    from gradio_client import Client

    folder = tmp_path / "normal"
    folder.mkdir()
    for index in range(3):
        Image.open(EXAMPLE).save(folder / f"{index}.png")
    *_, status = Client(served, verbose=False).predict(str(folder), "washer", 0, api_name="/calibrate")
    assert status.startswith("iapas: error: number of images must be a whole number of at least 1")
