"""The evaluation protocols (full, paper, anomalyclip-test), AUPRO's 8-connected regions and `iapas eval --from-maps`."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from iapas.cli import main
from iapas.config import Config
from iapas.data.synth import SynthSpec, write_synth_dataset
from iapas.evaluation.evaluate import EvalOptions, run_eval
from iapas.evaluation.metrics import PixelMetrics
from iapas.evaluation.protocols import PROTOCOLS, HeldMaps
from stub_methods import RUNS, BrightnessMethod


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def tiny(tmp_path):
    """One MVTec-layout category 'part': two defect images (2x2 and 4x4) and one normal (3x3), with maps.

    Maps are constant per image (0.5, 0.9 and 0.7) so that bicubic resizing keeps them, and masks
    resize by nearest to whole blocks: at 400x400 image A has 40000 defect pixels (its grey-100 pixel
    is below the paper's 128 cut), image B 40000.
    """
    root = tmp_path / "data"
    write_png(root / "part/train/good/000.png", np.full((3, 3, 3), 90))
    write_png(root / "part/test/crack/000.png", np.full((2, 2, 3), 90))
    write_png(root / "part/ground_truth/crack/000_mask.png", np.array([[255, 100], [0, 0]]))
    write_png(root / "part/test/crack/001.png", np.full((4, 4, 3), 90))
    b_mask = np.zeros((4, 4))
    b_mask[1:3, 1:3] = 255
    write_png(root / "part/ground_truth/crack/001_mask.png", b_mask)
    write_png(root / "part/test/good/000.png", np.full((3, 3, 3), 90))
    maps = tmp_path / "maps"
    for name, shape, value in (("crack/000", (2, 2), 0.5), ("crack/001", (4, 4), 0.9), ("good/000", (3, 3), 0.7)):
        (maps / "part/test" / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / "part/test" / f"{name}.npy", np.full(shape, value, np.float32))
    return root, maps


def category_metrics(out: Path, protocol: str = "paper") -> dict:
    runs = [p for p in (out / PROTOCOLS.get(protocol).folder).glob("maps-*") if p.is_dir()]
    assert len(runs) == 1
    return json.loads((runs[0] / "categories" / "part.json").read_text())


def test_paper_protocol_hand_computed_category(tiny, tmp_path, capsys):
    root, maps = tiny
    base = ["eval", "--root", str(root), "--from-maps", str(maps), "--protocol", "paper", "--no-progress"]
    assert main(base + ["--dataset", "mvtec", "-o", str(tmp_path / "mvtec")]) == 0
    record = category_metrics(tmp_path / "mvtec")
    # MVTec AD counts its normal image. Category min-max over [0.5, 0.9]: A -> 0, normal -> 0.5, B -> 1.
    # Defect pixels: 40000 at 0 (A) and 40000 at 1 (B); normal pixels: 120000 at 0, 160000 at 0.5, 120000 at 1.
    # AP = 0.5 x 40000/160000 + 0.5 x 80000/480000; F1 at t in (0.5, 1]: P = 1/4, R = 1/2 -> 1/3 (the best;
    # t = 0 gives 2/7, t in (0, 0.5] gives 1/5). A per-image normalisation would give all-zero maps and AP 1/6.
    assert record["images"] == 3 and record["anomalous"] == 2
    assert record["metrics"]["pixel_ap"] == pytest.approx(5 / 24, abs=1e-12)
    assert record["metrics"]["pixel_f1_max"] == pytest.approx(1 / 3, abs=1e-12)
    assert record["metrics"]["pixel_auroc"] == pytest.approx(0.5, abs=1e-12)
    assert record["metrics"]["image_auroc"] == pytest.approx(0.5)  # image scores 0.5, 0.9 vs normal 0.7
    # MPDD's normal test images are skipped by the official code: A -> 0, B -> 1 only.
    # AP = 0.5 x 1/4 + 0.5 x 80000/320000 = 1/4; F1 at t = 0: P = 1/4, R = 1 -> 2/5.
    assert main(base + ["--dataset", "mpdd", "-o", str(tmp_path / "mpdd")]) == 0
    record = category_metrics(tmp_path / "mpdd")
    assert record["images"] == 2
    assert record["metrics"]["pixel_ap"] == pytest.approx(1 / 4, abs=1e-12)
    assert record["metrics"]["pixel_f1_max"] == pytest.approx(2 / 5, abs=1e-12)
    table = capsys.readouterr().out
    assert "protocol paper" in table and "| part | 25.00 | 40.00 | 50.00 |" in table


def official_style_reference(maps, masks):
    """AP, AUROC and F1-max as the paper's evaluation computes them, written out with cv2, numpy and sklearn."""
    scores = np.stack([cv2.resize(m.astype(np.float64), (400, 400), interpolation=cv2.INTER_CUBIC).astype(np.float32)
                       for m in maps]).astype(np.float64)
    truth = np.stack([cv2.resize(g.astype(np.uint8), (400, 400), interpolation=cv2.INTER_NEAREST) for g in masks]).astype(int)
    scores = (scores - scores.min()) / (scores.max() - scores.min())
    best = 0.0
    for t in np.linspace(0, 1, 100):
        predicted = scores >= t
        tp = (predicted & (truth == 1)).sum()
        precision = tp / predicted.sum() if predicted.sum() else 0.0
        recall = tp / truth.sum()
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return average_precision_score(truth.ravel(), scores.ravel()), roc_auc_score(truth.ravel(), scores.ravel()), best


def test_held_maps_equal_an_independent_reference(tmp_path):
    rng = np.random.default_rng(5)
    maps, masks = [], []
    for height, width in ((37, 50), (64, 64), (23, 41)):
        m = rng.random((height, width)).astype(np.float32)
        g = np.zeros((height, width), bool)
        g[height // 4: height // 2, width // 3: width // 2] = True
        m[g] += 0.4
        maps.append(m)
        masks.append(g)
    scorer = HeldMaps(bins=4096, folder=tmp_path / "held")
    for m, g in zip(maps, masks):
        scorer.update(m, g)
    ap, auroc, f1 = official_style_reference(maps, masks)
    summary = scorer.summary()
    assert summary["pixel_ap"] == pytest.approx(ap, abs=1e-12)
    assert summary["pixel_auroc"] == pytest.approx(auroc, abs=1e-12)
    assert summary["pixel_f1_max"] == pytest.approx(f1, abs=1e-12)
    restored = HeldMaps(bins=4096, folder=tmp_path / "held")  # a resumed run reads the held maps back
    restored.restore(scorer.state())
    assert restored.summary() == summary
    (tmp_path / "held" / "000001.npz").unlink()
    with pytest.raises(Exception, match="lacks held map 000001.npz"):
        HeldMaps(bins=4096, folder=tmp_path / "held").restore(scorer.state())


def test_aupro_regions_are_8_connected():
    # a lone pixel touching a 3-pixel region at a corner: one region of 4 pixels (8-connected), not two
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = mask[2, 2] = True
    scores = np.full((5, 5), 0.5)
    scores[0, 0], scores[1, 1], scores[1, 2], scores[2, 2] = 0.875, 0.125, 0.125, 0.125
    metrics = PixelMetrics()
    metrics.update(scores, mask)
    assert metrics.regions == 1
    # at FPR 0 only the corner pixel is found: PRO = 1/4 (one region), flat to FPR 0.3; 4-connected it would be (1 + 0) / 2
    assert metrics.aupro() == pytest.approx(0.25)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    spec = SynthSpec(categories=("washer",), defects=("scratch", "hole"), train_good=2, test_good=3, per_defect=3, size=48, seed=3)
    return write_synth_dataset(tmp_path_factory.mktemp("synth"), spec)


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_from_maps_equals_running_the_method(synth, tmp_path, protocol):
    RUNS["current"] = BrightnessMethod()
    ran = EvalOptions("mvtec", synth, tmp_path / "out", method="test-brightness", progress=False, save_maps=True, protocol=protocol)
    run_dir = run_eval(ran, Config())
    from_maps = EvalOptions("mvtec", synth, tmp_path / "out", progress=False, protocol=protocol, from_maps=run_dir / "maps")
    RUNS["current"] = BrightnessMethod()
    maps_dir = run_eval(from_maps, Config())
    assert RUNS["current"].calls == 0  # no method ran
    expected = json.loads((run_dir / "categories" / "washer.json").read_text())
    got = json.loads((maps_dir / "categories" / "washer.json").read_text())
    assert got["metrics"] == expected["metrics"] and got["images"] == expected["images"] == 9
    assert json.loads((maps_dir / "run.json").read_text())["from_maps"] == str(run_dir / "maps")


def test_paper_protocol_resumes_mid_category(synth, tmp_path):
    RUNS["current"] = BrightnessMethod()
    whole = run_eval(EvalOptions("mvtec", synth, tmp_path / "whole", method="test-brightness", progress=False, protocol="paper"), Config())
    cut = EvalOptions("mvtec", synth, tmp_path / "cut", method="test-brightness", progress=False, protocol="paper")
    RUNS["current"] = BrightnessMethod(stop_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cut, Config())
    held = tmp_path / "cut/protocol-paper/test-brightness/partial/washer.maps"
    assert len(list(held.glob("*.npz"))) == 5
    RUNS["current"] = BrightnessMethod()
    resumed = run_eval(cut, Config())
    assert RUNS["current"].calls == 4  # 9 images, 5 held
    assert not held.exists()  # the held maps go once the category is finished
    assert (json.loads((resumed / "categories/washer.json").read_text())["metrics"]
            == json.loads((whole / "categories/washer.json").read_text())["metrics"])


def test_from_maps_errors_name_the_map(tiny, tmp_path, capsys):
    root, maps = tiny
    argv = ["eval", "--dataset", "mvtec", "--root", str(root), "--from-maps", str(maps), "-o", str(tmp_path / "o"), "--no-progress"]

    def error() -> str:
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    (maps / "part/test/crack/001.npy").rename(tmp_path / "kept.npy")
    assert main(argv) == 2
    assert error() == f"iapas: error: missing map {maps / 'part/test/crack/001.npy'} for {root / 'part/test/crack/001.png'}"
    (tmp_path / "kept.npy").rename(maps / "part/test/crack/001.npy")

    np.save(maps / "part/test/crack/007.npy", np.zeros((2, 2), np.float32))
    assert main(argv) == 2
    assert error().startswith(f"iapas: error: extra map {maps / 'part/test/crack/007.npy'} names no test image of mvtec")
    (maps / "part/test/crack/007.npy").unlink()

    np.save(maps / "part/test/crack/001.npy", np.zeros((4, 5), np.float32))
    assert main(argv) == 2
    assert error() == f"iapas: error: map {maps / 'part/test/crack/001.npy'} is 4x5 but its image 001.png is 4x4 (height x width)"
    np.save(maps / "part/test/crack/001.npy", np.zeros((4, 4), np.int64))
    assert main(argv) == 2
    assert error() == f"iapas: error: map {maps / 'part/test/crack/001.npy'} holds int64 values, not floats"
    np.save(maps / "part/test/crack/001.npy", np.zeros((4, 4), np.float32))

    assert main(argv + ["--save-maps"]) == 2
    assert "exclude each other" in error()
    assert main(["eval", "--dataset", "mvtec", "--root", str(root), "--from-maps", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")]) == 2
    assert error() == f"iapas: error: maps folder not found: {tmp_path / 'nowhere'}"
    assert main(argv) == 0  # everything in place again: the full protocol measures the same folder
    assert "protocol full" in capsys.readouterr().out


# one normal and one defective test image per layout: (normal image, defect image, its mask, extra files)
LAYOUTS = {
    "mvtec": ("c/test/good/0.png", "c/test/hole/0.png", "c/ground_truth/hole/0_mask.png", ["c/train/good/0.png"]),
    "mpdd": ("c/test/good/0.png", "c/test/hole/0.png", "c/ground_truth/hole/0_mask.png", ["c/train/good/0.png"]),
    "dtd": ("c/test/good/0.png", "c/test/hole/0.png", "c/ground_truth/hole/0_mask.png", ["c/train/good/0.png"]),
    "btad": ("01/test/ok/0.bmp", "01/test/ko/1.bmp", "01/ground_truth/ko/1.png", ["01/train/ok/0.bmp"]),
    "mtd": ("MT_Free/Imgs/a.jpg", "MT_Blowhole/Imgs/b.jpg", "MT_Blowhole/Imgs/b.png", []),
    "ksdd1": ("kos01/Part0.jpg", "kos01/Part1.jpg", "kos01/Part1_label.bmp", []),
    "dagm": ("Class1/Test/0003.PNG", "Class1/Test/0004.PNG", "Class1/Test/Label/0004_label.PNG", ["Class1/Train/0001.PNG"]),
    "visa": ("v/Data/Images/Normal/0.JPG", "v/Data/Images/Anomaly/1.JPG", "v/Data/Masks/Anomaly/1.png", ["v/Data/Images/Normal/2.JPG"]),
    "folder": ("good/a.png", "dent/b.png", "ground_truth/dent/b_mask.png", []),
}
PAPER_KEEPS_NORMAL = {"mvtec", "visa", "mtd", "ksdd1"}  # test_zsas.py's skip rule read per layout


def write_layout(name: str, root: Path, images: list[np.ndarray], truth: np.ndarray) -> None:
    """One normal and one defective test image (and the layout's extra files) of dataset layout `name` under root."""
    normal, defect, mask_path, extra = LAYOUTS[name]
    for path, pixels in zip((normal, defect, *extra), images):
        write_png(root / path, pixels)
    write_png(root / mask_path, truth)
    if name == "ksdd1":
        write_png(root / "kos01/Part0_label.bmp", np.zeros(truth.shape))
    if name == "dagm":  # DAGM's Train has its Label/ folder too (a layout without one is refused)
        (root / "Class1/Train/Label").mkdir(parents=True)
    if name == "visa":
        (root / "split_csv").mkdir()
        (root / "split_csv/1cls.csv").write_text(
            "object,split,label,image,mask\n" f"v,train,normal,{extra[0]},\n" f"v,test,normal,{normal},\n"
            f"v,test,anomaly,{defect},{mask_path}\n")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_paper_protocol_on_every_layout(name, tmp_path):
    normal, defect, _, _ = LAYOUTS[name]
    root = tmp_path / "data"
    truth = np.zeros((6, 8))
    truth[1:3, 2:5] = 255
    write_layout(name, root, [np.full((6, 8, 3), 120)] * 3, truth)
    rng = np.random.default_rng(0)
    for path in (normal, defect):
        target = tmp_path / "maps" / Path(path).with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, ((rng.random((6, 8)) + truth / 255) / 2).astype(np.float32))  # saved maps lie in [0, 1]
    options = EvalOptions(name, root, tmp_path / "out", progress=False, protocol="paper", from_maps=tmp_path / "maps")
    run_dir = run_eval(options, Config())
    (record,) = [json.loads(p.read_text()) for p in (run_dir / "categories").glob("*.json")]
    assert (record["images"], record["anomalous"]) == (2 if name in PAPER_KEEPS_NORMAL else 1, 1)
    assert 0 < record["metrics"]["pixel_ap"] <= 1


def test_paper_mean_is_over_rounded_category_values():
    from iapas.evaluation.reports import mean_row

    records = [{"metrics": {"pixel_ap": 0.123456}}, {"metrics": {"pixel_ap": 0.2}}]
    assert mean_row(records)["pixel_ap"] == pytest.approx((0.123456 + 0.2) / 2)
    # test_zsas.py: round(12.3456, 2) = 12.35 per category, then the mean
    assert mean_row(records, PROTOCOLS.get("paper").mean_rounding)["pixel_ap"] == pytest.approx((0.1235 + 0.2) / 2, abs=1e-15)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_official_recipe_under_the_paper_protocol_on_every_layout(name, tmp_path, weights_dir, capsys):
    """Issue 10's done-when: `eval --recipe official --protocol paper --compare-paper` runs on every layout."""
    from iapas.cli import main

    truth = np.zeros((40, 48))
    truth[10:20, 12:30] = 255
    root = tmp_path / "data"
    write_layout(name, root, [np.random.default_rng(i).integers(0, 255, (40, 48, 3)) for i in range(3)], truth)
    code = main(["eval", "--dataset", name, "--root", str(root), "-o", str(tmp_path / "out"), "--recipe", "official",
                 "--protocol", "paper", "--compare-paper", "--weights", str(weights_dir), "--no-progress",
                 "--cache-dir", str(tmp_path / "llm")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "protocol paper" in printed.out and "| **mean** |" in printed.out
    run = json.loads(next((tmp_path / "out").rglob("run.json")).read_text())
    assert run["protocol"] == "paper" and run["config"]["recipe"] == "official"


def test_anomalyclip_test_protocol_measures_at_the_518_input_size(tmp_path):
    """Images of different sizes weigh alike at 518 px, by their pixel counts at their own size.

    A normal 2x2 image with map 0.6, a defect 2x2 (all anomalous) with map 0.5 and a defect 4x4 (all
    anomalous) with map 0.7; constant maps and masks stay constant under every resize. At the images'
    sizes: 4 defect pixels at 0.5 and 16 at 0.7 against 4 normal at 0.6, AUROC 16/20. At 518 x 518 each
    image counts 518^2 pixels: AUROC 1/2, AP as sklearn's on one pixel per image.
    """
    root, maps = tmp_path / "data", tmp_path / "maps"
    write_png(root / "part/train/good/000.png", np.full((2, 2, 3), 90))
    for name, size, value, anomalous in (("good/000", 2, 0.6, False), ("crack/000", 2, 0.5, True), ("crack/001", 4, 0.7, True)):
        write_png(root / f"part/test/{name}.png", np.full((size, size, 3), 90))
        if anomalous:
            write_png(root / f"part/ground_truth/{name}_mask.png", np.full((size, size), 255))
        (maps / "part/test" / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / "part/test" / f"{name}.npy", np.full((size, size), value, np.float32))
    base = ["eval", "--root", str(root), "--from-maps", str(maps), "--dataset", "mvtec", "--no-progress"]
    assert main(base + ["--protocol", "anomalyclip-test", "-o", str(tmp_path / "518")]) == 0
    record = category_metrics(tmp_path / "518", "anomalyclip-test")["metrics"]
    assert record["pixel_auroc"] == pytest.approx(0.5, abs=1e-12)
    assert record["pixel_ap"] == pytest.approx(average_precision_score([0, 1, 1], [0.6, 0.5, 0.7]), abs=1e-12)
    assert main(base + ["-o", str(tmp_path / "own")]) == 0
    assert category_metrics(tmp_path / "own", "full")["metrics"]["pixel_auroc"] == pytest.approx(16 / 20, abs=1e-3)


def test_anomalyclip_test_masks_are_bilinear_then_half():
    from iapas.evaluation.protocols import reference_test_map, reference_test_mask

    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True  # the left half: PIL's bilinear ramps across the middle, > 0.5 keeps the left half exactly
    resized = reference_test_mask(mask, 8)
    assert resized[:, :4].all() and not resized[:, 4:].any()
    assert reference_test_map(np.full((518, 518), 0.25, np.float32)).max() == 0.25  # the input size: unchanged
