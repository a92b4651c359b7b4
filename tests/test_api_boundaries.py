"""The Python API checks its arguments at the boundary (one IapasError each), and one Pipeline serves several threads."""
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas import Config, IapasError, Pipeline
from iapas.calibration import Calibration


def image(seed: int, shape=(48, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def low_threshold_pipeline(weights_dir):
    """The demo models with thresholds low enough that random weights give boxes, so maps are not all zero."""
    return Pipeline.from_pretrained(weights_dir, Config().updated({"detection.box_threshold": 0.0,
                                                                   "detection.text_threshold": 0.0}))


def test_one_pipeline_shared_by_three_threads_equals_one_thread(low_threshold_pipeline):
    pipeline = low_threshold_pipeline
    images = [image(seed) for seed in range(6)]
    alone = [pipeline.segment(pixels) for pixels in images]
    assert any(len(result.boxes) for result in alone)
    together: dict[int, object] = {}
    errors = []

    def work(indices):
        try:
            for index in indices:
                together[index] = pipeline.segment(images[index])
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(range(start, 6, 3),)) for start in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    for index, expected in enumerate(alone):
        np.testing.assert_array_equal(together[index].anomaly_map, expected.anomaly_map)
        np.testing.assert_array_equal(together[index].boxes.xyxy, expected.boxes.xyxy)


@pytest.mark.parametrize("call, message", [
    (lambda p: list(p.segment_batch("x.png")), "segment_batch takes a list of images, not one str"),
    (lambda p: p.segment_many(image(0)), "segment_many takes a list of images, not one ndarray"),
    (lambda p: p.segment(image(0), prompts="scratch"), "prompts must be a list of strings such as ['scratch']"),
    (lambda p: p.segment(image(0), prompts=[None]), "prompts must be strings, got None"),
    (lambda p: p.segment(image(0), calibration="calib.json"), "load_calibration('calib.json')"),
    (lambda p: p.segment(np.zeros((300, 400, 3), np.uint8)), "image too large: array of shape (300, 400, 3)"),
    (lambda p: p.segment(Image.new("RGB", (400, 300))), "image too large: image is 400x300"),
    (lambda p: p.segment(object()), "an image is a path, a numpy array or a PIL image, not object"),
    (lambda p: p.calibrate([image(0), image(1)]), "calibrate takes a folder of normal images or a list of image files"),
    (lambda p: p.graph.replaced("masking", object()), "stage #3 is a object, not a Stage"),
])
def test_public_api_arguments_are_one_iapas_error_each(weights_dir, call, message):
    pipeline = Pipeline.from_pretrained(weights_dir, Config().updated({"max_image_pixels": 100_000}))
    with pytest.raises(IapasError) as error:
        call(pipeline)
    assert message in str(error.value)


def test_a_numpy_scalar_is_a_number(pipeline):
    result = pipeline.segment(image(3), size_threshold=np.float32(0.5))
    assert result.anomaly_map.shape == (48, 64)
    assert pipeline.segment(image(3), size_threshold=np.float64(0.5)).anomaly_map.shape == (48, 64)
    with pytest.raises(IapasError, match="size_threshold must be"):
        pipeline.segment(image(3), size_threshold=np.bool_(True))
