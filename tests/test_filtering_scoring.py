import numpy as np
import pytest

from iapas.stages import anomaly_map, filter_by_size, nms
from iapas.types import Boxes, Masks


def test_nms_keeps_exact_boxes():
    boxes = Boxes(
        np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], np.float32),
        np.array([0.9, 0.8, 0.7, 0.95], np.float32),
        ("a", "b", "c", "d"),
    )
    # IoU(box0, box1) = 81 / 119 = 0.68 > 0.5: box1 goes; IoU(box3, box0) = 50 / 100 = 0.5, not above: both stay.
    kept = nms(boxes, 0.5)
    assert kept.phrases == ("d", "a", "c")
    np.testing.assert_allclose(kept.scores, [0.95, 0.9, 0.7])
    # At IoU 0.4 box0 falls to box3 (IoU 0.5); box1 then survives: its IoU with box3 is 36 / 114 = 0.32,
    # and the box that overlapped it (box0) is already gone.
    assert nms(boxes, 0.4).phrases == ("d", "b", "c")


def test_nms_empty():
    assert len(nms(Boxes.empty(), 0.5)) == 0


def test_size_filter_is_strict_area_ratio():
    # Image 100 x 200 = 20000 px. Areas: 16000 (0.8), 15998 (0.7999), 20000 (1.0), 100 (0.005).
    boxes = Boxes(
        np.array([[0, 0, 160, 100], [0, 0, 159.99, 99.99], [0, 0, 200, 100], [5, 5, 15, 15]], np.float32),
        np.array([0.5, 0.6, 0.7, 0.8], np.float32),
        ("exactly", "just-below", "whole", "small"),
    )
    kept = filter_by_size(boxes, 100, 200, 0.8)
    assert kept.phrases == ("just-below", "small")
    assert filter_by_size(boxes, 100, 200, 1.01).phrases == ("exactly", "just-below", "whole", "small")
    assert len(filter_by_size(boxes, 100, 200, 0.0)) == 0


def test_score_map_sums_and_clips():
    masks = np.zeros((3, 4, 5), bool)
    masks[0, 0:2, 0:3] = True
    masks[1, 1:3, 2:5] = True
    masks[2, 1, 2] = True
    heat = anomaly_map(Masks(masks), np.array([0.6, 0.3, 0.5], np.float32), 4, 5)
    expected = np.array(
        [
            [0.6, 0.6, 0.6, 0.0, 0.0],
            [0.6, 0.6, 1.0, 0.3, 0.3],  # (1, 2): 0.6 + 0.3 + 0.5 = 1.4, clipped to 1
            [0.0, 0.0, 0.3, 0.3, 0.3],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    assert heat.dtype == np.float32
    np.testing.assert_allclose(heat, expected, atol=1e-6)


def test_score_map_without_masks_is_zero():
    heat = anomaly_map(Masks.empty(3, 4), np.zeros(0, np.float32), 3, 4)
    assert heat.shape == (3, 4) and not heat.any()


def test_score_map_rejects_mismatch():
    with pytest.raises(ValueError):
        anomaly_map(Masks(np.zeros((2, 3, 3), bool)), np.array([0.5], np.float32), 3, 3)


def test_boxes_validate_and_freeze():
    boxes = Boxes(np.array([[0, 0, 2, 3]]), np.array([0.5]))
    assert boxes.phrases == ("",)
    assert boxes.areas().tolist() == [6.0]
    with pytest.raises(ValueError):
        boxes.xyxy[0, 0] = 1
    with pytest.raises(ValueError):
        Boxes(np.zeros((2, 4)), np.zeros(3))


def test_top_keeps_the_highest_scores_in_descending_order():
    boxes = Boxes(np.arange(20, dtype=np.float32).reshape(5, 4), np.array([0.3, 0.9, 0.3, 0.5, 0.1], np.float32),
                  ("a", "b", "c", "d", "e"))
    assert boxes.top(3).phrases == ("b", "d", "a")  # the tie at 0.3 goes to the earlier box
    np.testing.assert_array_equal(boxes.top(1).xyxy, [[4, 5, 6, 7]])
    assert boxes.top(0) is boxes and boxes.top(5) is boxes and len(Boxes.empty().top(2)) == 0
