"""SAA+: its rules on hand-made cases, its prompt files, and the method on tiny random models through the real loaders."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from iapas.config import Config
from iapas.methods import METHODS
from iapas.methods.saa.prompts import prompts_for
from iapas.methods.saa.rules import Proposals, confidence_map, filter_boxes, largest_area, output_map, pixel_boxes, rescore
from iapas.methods.saa.saliency import single_object_saliency
from iapas.weights.demo import build_demo_grounding_dino, build_demo_sam_checkpoint, build_demo_saa_saliency


def test_box_filter_keeps_confident_small_boxes_whose_phrase_lacks_the_filtered_word():
    probabilities = np.array([
        [0.05, 0.09, 0.02],  # best 0.09: not above the 0.1 box threshold
        [0.05, 0.05, 0.80],  # kept: best 0.8, area 0.04, named "scratch"
        [0.95, 0.20, 0.10],  # area 0.25: not below the cap 0.25
        [0.50, 0.40, 0.60],  # phrase "metal nut scratch" holds "nut": dropped
        [0.11, 0.05, 0.10],  # kept: best 0.11 (strictly above 0.1), area 0.01, named "metal"
    ], np.float32)
    boxes = np.array([[0.5, 0.5, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1],
                      [0.1, 0.9, 0.1, 0.1]], np.float32)
    words = np.array(["metal", "nut", "scratch"])

    def phrase(above):
        return " ".join(words[above])

    kept = filter_boxes(probabilities, boxes, phrase, "nut", 0.1, 0.1, max_area=0.25)
    assert kept.scores.tolist() == pytest.approx([0.8, 0.11])
    np.testing.assert_array_equal(kept.cxcywh, boxes[[1, 4]])
    assert kept.phrases == ("scratch", "metal")  # the tokens above the 0.1 text threshold
    assert len(filter_boxes(probabilities, boxes, phrase, "nut", 0.1, 0.1, max_area=0.001)) == 0
    assert largest_area(kept) == pytest.approx(0.04) and largest_area(Proposals.empty()) == 1.0


def test_pixel_boxes_are_not_clamped():
    np.testing.assert_allclose(pixel_boxes(np.array([[0.9, 0.5, 0.4, 0.2]], np.float32), 100, 200), [[140, 40, 220, 60]])


def test_confidence_ranking_keeps_the_top_k_and_averages_with_one_extra_weight():
    masks = np.zeros((3, 2, 3), bool)
    masks[0, 0, 0] = True  # lowest score: dropped by the cap of 2
    masks[1, 0, 1:] = True
    masks[2, :, 2] = True
    scores = np.array([0.2, 0.9, 0.5])
    heat = confidence_map(masks, scores, max_anomalies=2)
    expected = np.array([[0, 0.9 / 2, (0.9 + 0.5) / 3], [0, 0, 0.5 / 2]])
    np.testing.assert_allclose(heat, expected)
    np.testing.assert_allclose(confidence_map(masks, scores, max_anomalies=1), np.where(masks[1], 0.45, 0))


def test_rescore_by_saliency_inside_each_mask():
    masks = np.zeros((2, 2, 2), bool)
    masks[0, 0] = True
    saliency = np.array([[0.2, 0.4], [1.0, 1.0]])
    np.testing.assert_allclose(rescore(masks, np.array([0.5, 0.7]), saliency), [0.5 * np.exp(3 * 0.3), 0.7])  # empty mask: unchanged


def test_prompt_files():
    bottle = prompts_for("mvtec", "bottle")
    assert bottle.language == (("defect on bottle", "bottle"), ("damage on bottle", "bottle"), ("flaw on bottle", "bottle"),
                               ("broken part. contamination. white broken.", "bottle"))
    assert (bottle.object_caption, bottle.objects, bottle.max_anomalies, bottle.max_area) == ("bottle,", 1, 5, 0.3)
    candle = prompts_for("visa", "candle")
    assert (candle.objects, candle.max_anomalies, candle.object_max_area) == (4, 1, 0.25)
    assert prompts_for("ksdd1", "ksdd1").language[-1] == ("defect.", "ksdd2")  # the IAP-AS copy's KSDD1 -> KSDD2 file
    mvtec = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw", "tile",
             "toothbrush", "transistor", "wood", "zipper"]
    visa = ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
    assert all(prompts_for("mvtec", name).source == "mvtec.toml" for name in mvtec)
    assert all(prompts_for("visa", name).source == "visa.toml" for name in visa)
    assert prompts_for("visa", "capsules").objects == 20 and prompts_for("mvtec", "screw").max_area == 0.1
    other = prompts_for("mpdd", "tubes")
    assert len(other.language) == 3 and other.object_caption == "tubes" and other.source == "general"


@pytest.fixture(scope="module")
def saa(tmp_path_factory):
    weights = tmp_path_factory.mktemp("saa-weights")
    build_demo_grounding_dino(weights / "demo" / "grounding-dino-demo")
    build_demo_sam_checkpoint(weights / "demo" / "sam_demo.pth")
    build_demo_saa_saliency(weights / "demo" / "wide_resnet50_2_demo.pth")
    method = METHODS.get("saa")(Config(weights_dir=str(weights), device="cpu"), ())
    # a fresh Grounding DINO predicts one box size for every query (its box head's last layer starts at zero):
    # random last layers give boxes of many sizes, so the area rules have something to choose from
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in method.detector.model.bbox_embed:
            head.layers[-1].weight.copy_(torch.randn(head.layers[-1].weight.shape, generator=generator))
            head.layers[-1].bias.copy_(torch.randn(head.layers[-1].bias.shape, generator=generator))
    return method


def test_saliency_is_each_positions_mean_of_its_400_largest_dissimilarities(saa):
    image = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    ours = single_object_saliency(saa.saliency, image)
    # independently, in numpy: features of the 256 x 256 image, cosine, partition for the 400 largest
    features = saa.saliency.features(cv2.resize(image, (256, 256)), 256)[0].numpy()
    flat = features.reshape(features.shape[0], -1)
    dissimilar = 0.5 * (1 - flat.T @ flat)
    top = -np.partition(-dissimilar, 399, axis=1)[:, :400]
    expected = cv2.resize(top.mean(axis=1).reshape(features.shape[1:]).astype(np.float32), (80, 48))
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_method_on_tiny_random_models(saa):
    saa.use_dataset("mvtec")
    saa.prepare("metal_nut", [], "object", None)
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    parts = saa.run(image)
    objects, anomalies = parts["objects"], parts["anomalies"]
    assert len(objects) > 0 and (objects.cxcywh[:, 2] * objects.cxcywh[:, 3] < 1.0).all()
    cap = largest_area(objects) * 1.0  # metal_nut: anomalies below 1.0 of the largest object box
    assert len(anomalies) > 0 and (anomalies.cxcywh[:, 2] * anomalies.cxcywh[:, 3] < cap).all()
    # the general prompts drop boxes named "metal_nut", which no decoded phrase spells so ("metal _ nut")
    assert (anomalies.scores > 0.1).all() and not any("metal_nut" in phrase for phrase in anomalies.phrases)
    assert parts["anomaly_masks"].shape == (len(anomalies), 60, 90)
    # the backend's raw probabilities agree with its own box selection on the same caption
    probabilities, _, _ = saa.detector.token_probabilities(image, "defect on metal_nut.")
    found = saa.detector.detect_captions(image, ["defect on metal_nut."], 0.1, 0.1)
    np.testing.assert_allclose(np.sort(found.scores), np.sort(probabilities.max(axis=1)[probabilities.max(axis=1) > 0.1]), atol=1e-6)
    result = saa.result(parts, image.shape[:2])
    assert len(result.boxes) == len(anomalies) and result.masks.data.shape == (len(anomalies), 60, 90)
    assert result.anomaly_map.shape == (60, 90) and 0 <= result.anomaly_map.min() and result.anomaly_map.max() < 1
    np.testing.assert_allclose(result.anomaly_map * np.exp(3), parts["map"], rtol=1e-5, atol=1e-6)
    assert output_map(parts["map"]).shape == (400, 400)  # upstream's output size (SaaPlus.official_map)


class GridFeatures:
    """A saliency net that hands back fixed (1, C, h, w) features, whatever the image."""

    def __init__(self, features):
        self.grid = torch.tensor(features, dtype=torch.float32)

    def features(self, image, size):
        return self.grid


def test_multi_object_saliency_scores_each_object_against_the_others():
    from iapas.methods.saa.saliency import multi_object_saliency

    # three positions in a row: unit features (1, 0), (0, 1), (1, 0); object A = position 0, object B = positions 1 and 2
    net = GridFeatures([[[[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]]])
    image = np.zeros((1, 3, 3), np.uint8)
    masks = np.array([[[True, False, False]], [[False, True, True]]])
    # A's position matches B's position 2 (cos 1): 0; B's position 1 is orthogonal to A (cos 0): 0.5; position 2 matches A: 0
    np.testing.assert_allclose(multi_object_saliency(net, image, masks), [[0.0, 0.5, 0.0]])
    # B also covers position 0. For A, that position of B is zeroed (it is A's own): A's best is still B's position 2 (0).
    # For B, all its positions are zeroed, A's only position among them: B's best cosine is 0 everywhere (0.5); the max: 0.5
    overlapping = np.array([[[True, False, False]], [[True, True, True]]])
    np.testing.assert_allclose(multi_object_saliency(net, image, overlapping), [[0.5, 0.5, 0.5]])
    # fewer than two objects: nothing to compare (upstream fails there), zeros
    np.testing.assert_allclose(multi_object_saliency(net, image, masks[:1]), np.zeros((1, 3)))
