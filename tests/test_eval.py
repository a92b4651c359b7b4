import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from iapas.cli import main
from iapas.config import Config
from iapas.data.datasets import load_dataset, load_mask
from iapas.data.synth import DEFECTS, SURFACES, SynthSpec, write_synth_dataset
from iapas.evaluation.evaluate import EvalOptions, run_eval
from stub_methods import RUNS, BrightnessMethod


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    spec = SynthSpec(categories=("washer", "tile"), defects=("scratch", "hole", "stain"), train_good=3, test_good=3,
                     per_defect=4, size=64, seed=7)
    return write_synth_dataset(tmp_path_factory.mktemp("synth"), spec)


VALID_PAIRS = [(c, d) for c in SURFACES for d in DEFECTS if not (d == "missing" and SURFACES[c][0] == "texture")]


@pytest.mark.parametrize("category, defect", VALID_PAIRS)
def test_synthetic_masks_are_exactly_the_changed_pixels(category, defect):
    rng = np.random.default_rng(3)
    canvas, surface = SURFACES[category][1](rng, 96)
    pasted = canvas.copy()
    mask = DEFECTS[defect](rng, pasted, surface)
    changed = np.any(pasted != canvas, axis=2)
    assert mask.any() and not (changed & ~mask).any()  # nothing changed outside the mask
    assert changed.sum() >= 0.9 * mask.sum()  # and (almost) every mask pixel changed


def test_synth_dataset_is_reproducible_and_loads(synth_root, tmp_path):
    dataset = load_dataset("mvtec", synth_root)
    assert dataset.categories == ["tile", "washer"]
    samples = dataset.samples("washer")
    assert sum(s.label for s in samples) == 12 and len(samples) == 15 and len(dataset.normal["washer"]) == 3
    for sample in samples:
        assert load_mask(sample, 64, 64).any() == bool(sample.label)
    again = write_synth_dataset(tmp_path, SynthSpec(categories=("washer", "tile"), defects=("scratch", "hole", "stain"),
                                                    train_good=3, test_good=3, per_defect=4, size=64, seed=7))
    for path in synth_root.rglob("*.png"):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(again / path.relative_to(synth_root))))


def test_eval_resumes_mid_category_with_identical_metrics(synth_root, tmp_path):
    options = EvalOptions("mvtec", synth_root, tmp_path / "full", method="test-brightness", categories=["washer"], progress=False)
    RUNS["current"] = BrightnessMethod()
    reference = json.loads((run_eval(options, Config()) / "categories" / "washer.json").read_text())
    assert RUNS["current"].calls == 15

    interrupted = EvalOptions("mvtec", synth_root, tmp_path / "cut", method="test-brightness", categories=["washer"], progress=False)
    RUNS["current"] = BrightnessMethod(stop_after=12)
    with pytest.raises(KeyboardInterrupt):
        run_eval(interrupted, Config())
    assert (tmp_path / "cut/test-brightness/partial/washer.npz").is_file()  # saved after image 12
    RUNS["current"] = BrightnessMethod()
    resumed = json.loads((run_eval(interrupted, Config()) / "categories" / "washer.json").read_text())
    assert RUNS["current"].calls == 3  # 15 images, 12 already counted
    assert resumed["metrics"] == pytest.approx(reference["metrics"])
    assert resumed["images"] == 15 and resumed["anomalous"] == 12
    RUNS["current"] = BrightnessMethod()
    run_eval(interrupted, Config())
    assert RUNS["current"].calls == 0  # a finished category is not run again


def test_eval_iapas_writes_tables_curves_and_ablation(capsys, synth_root, weights_dir, tmp_path):
    out = tmp_path / "results"
    argv = ["eval", "--dataset", "mvtec", "--root", str(synth_root), "-o", str(out), "--weights", str(weights_dir),
            "--no-progress", "--cache-dir", str(tmp_path / "c"), "--limit", "4"]
    assert main(argv + ["--save-maps"]) == 0
    printed = capsys.readouterr().out
    assert "| **mean** |" in printed and "protocol full" in printed
    run_dir = out / "iapas"
    for name in ("table.md", "table.csv", "run.json", "pr_curves/tile.png", "pr_curves/washer.png", "calibrations/tile.json"):
        assert (run_dir / name).is_file(), name
    # maps are named by the image's path relative to the dataset root
    from iapas.data.datasets import limited_samples, load_dataset

    drawn = limited_samples(load_dataset("mvtec", synth_root).samples("washer"), 4, 111)  # --limit draws with the seed
    assert {s.label for s in drawn} == {0, 1}
    assert sorted(p.relative_to(run_dir / "maps").as_posix() for p in (run_dir / "maps" / "washer").rglob("*.npy")) == sorted(
        s.image_path.relative_to(synth_root).with_suffix(".npy").as_posix() for s in drawn)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["seed"] == 111 and "torch" in info["versions"] and info["categories"] == ["tile", "washer"]
    assert info["protocol"] == "full"
    record = json.loads((run_dir / "categories" / "tile.json").read_text())
    assert record["kind"] == "texture" and record["images"] == 4
    assert all(0 <= v <= 1 for v in record["metrics"].values() if not np.isnan(v))
    assert json.loads((run_dir / "calibrations" / "tile.json").read_text())["box_threshold"] == 0.1
    batched = tmp_path / "batched"  # --batch-size 3: the calibrated pipeline takes three images per forward
    assert main([*argv[:5], "-o", str(batched), *argv[7:], "--batch-size", "3"]) == 0
    capsys.readouterr()
    for category in ("tile", "washer"):
        alone, together = (json.loads((folder / "iapas" / "categories" / f"{category}.json").read_text()) for folder in (out, batched))
        assert together["metrics"] == pytest.approx(alone["metrics"], abs=1e-6) and together["images"] == alone["images"]
    assert main(argv + ["--ablate", "filter,llm"]) == 0
    capsys.readouterr()
    table3 = (out / "table3.md").read_text()
    assert "| O | O | O |" in table3 and "| O | X | X |" in table3
    assert json.loads((out / "iapas-no-filter-llm" / "calibrations" / "tile.json").read_text())["p_adj"] == []

    assert main(argv + ["--compare-paper"]) == 2  # Table 1 was not measured under the full protocol
    assert capsys.readouterr().err.strip().startswith("iapas: error: --compare-paper needs --protocol paper")
    assert main(argv + ["--compare-paper", "--protocol", "paper"]) == 0
    printed = capsys.readouterr().out
    assert "protocol paper" in printed and "| IAP-AS (paper) | 31.43 | 40.13 |" in printed
    paper_dir = out / "protocol-paper" / "iapas"  # its own folder: never resumes a full-protocol run
    assert json.loads((paper_dir / "run.json").read_text())["protocol"] == "paper"
    assert "Protocol paper:" in (paper_dir / "table.md").read_text()


def test_eval_errors(capsys, synth_root, tmp_path):
    assert main(["eval", "--dataset", "mvtec", "--root", str(tmp_path / "none"), "-o", str(tmp_path)]) == 2
    assert "mvtec root not found" in capsys.readouterr().err
    assert main(["eval", "--dataset", "mvtec", "--root", str(synth_root), "--categories", "cable", "-o", str(tmp_path)]) == 2
    assert "has no category 'cable'" in capsys.readouterr().err
    assert main(["eval", "--dataset", "mvtec", "--root", str(synth_root), "--ablate", "magic", "-o", str(tmp_path)]) == 2
    assert "cannot ablate 'magic'" in capsys.readouterr().err


def test_cli_data_synth(capsys, tmp_path):
    assert main(["data", "synth", "-o", str(tmp_path / "d"), "--categories", "board", "--size", "48", "--per-defect", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "d/board/test").iterdir()) == ["crack", "good", "hole", "scratch", "stain"]
    assert main(["data", "synth", "-o", str(tmp_path / "e"), "--categories", "pizza"]) == 2


@dataclass
class BatchedBrightness(BrightnessMethod):
    """BrightnessMethod with a batched entry point: records each call's size; the image of mean `fail_mean` fails in its place."""

    fail_mean: float | None = None
    batches: list = field(default_factory=list)

    def segment_outcomes(self, images, batch_size=None):
        self.batches.append(len(images))
        return [ValueError("cannot segment this one") if image.mean() == self.fail_mean else self.segment(image)
                for image in images]


def test_eval_batch_size_hands_images_to_the_batched_entry_point_with_equal_metrics(synth_root, tmp_path):
    def run(out, batch_size, method):
        RUNS["current"] = method
        options = EvalOptions("mvtec", synth_root, tmp_path / out, method="test-brightness", categories=["washer"], progress=False)
        return json.loads((run_eval(options, Config(batch_size=batch_size)) / "categories" / "washer.json").read_text())

    one = run("one", 1, BatchedBrightness())
    assert RUNS["current"].batches == [] and RUNS["current"].calls == 15  # batch size 1: image by image, as before
    three = run("three", 3, BatchedBrightness())
    assert RUNS["current"].batches == [3] * 5 and RUNS["current"].calls == 15
    assert three["metrics"] == one["metrics"] and three["images"] == one["images"] == 15


def test_eval_batched_failure_is_the_images_own_and_a_rerun_resumes_after_the_counted_ones(synth_root, tmp_path):
    from iapas.data.datasets import load_dataset
    from iapas.images import load_image

    samples = load_dataset("mvtec", synth_root).samples("washer")
    failing = samples[7]  # the second image of the third batch of three: images 0..6 are counted, 8 is not
    method = BatchedBrightness(fail_mean=load_image(failing.image_path).pixels.mean())
    assert sum(load_image(s.image_path).pixels.mean() == method.fail_mean for s in samples) == 1
    RUNS["current"] = method
    options = EvalOptions("mvtec", synth_root, tmp_path / "cut", method="test-brightness", categories=["washer"], progress=False)
    with pytest.raises(ValueError, match="cannot segment this one"):
        run_eval(options, Config(batch_size=3))
    with np.load(tmp_path / "cut/test-brightness/partial/washer.npz") as state:
        assert len(state["done"]) == 7  # the images before the failing one, in order, and none after it
    RUNS["current"] = BatchedBrightness()
    resumed = json.loads((run_eval(options, Config(batch_size=3)) / "categories" / "washer.json").read_text())
    assert RUNS["current"].calls == 8 and RUNS["current"].batches == [3, 3, 2]  # the remaining images, still batched
    RUNS["current"] = BatchedBrightness()
    reference = EvalOptions("mvtec", synth_root, tmp_path / "ref", method="test-brightness", categories=["washer"], progress=False)
    assert resumed["metrics"] == json.loads((run_eval(reference, Config()) / "categories" / "washer.json").read_text())["metrics"]


def test_cli_eval_batch_size_on_a_clip_method_gives_the_unbatched_metrics(capsys, synth_root, weights_dir, tmp_path):
    def run(out, *extra):
        argv = ["eval", "--dataset", "mvtec", "--root", str(synth_root), "-o", str(tmp_path / out), "--weights", str(weights_dir),
                "--method", "winclip", "--categories", "washer", "--no-progress", "--save-maps", *extra]
        assert main(argv) == 0
        run_dir = tmp_path / out / "winclip"
        return json.loads((run_dir / "categories" / "washer.json").read_text()), run_dir

    one, one_dir = run("one")
    three, three_dir = run("three", "--batch-size", "3")
    capsys.readouterr()
    assert three["images"] == one["images"] == 15
    assert three["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    for path in (one_dir / "maps").rglob("*.npy"):  # the batched maps are the one-by-one maps (CLIP batching tolerance)
        np.testing.assert_allclose(np.load(three_dir / "maps" / path.relative_to(one_dir / "maps")), np.load(path), rtol=0, atol=1e-5)
    finished = (three_dir / "categories" / "washer.json").stat().st_mtime_ns
    again, _ = run("three")  # batch size is not part of the fingerprint: the batched run's results are reused, not refused
    assert again == three and (three_dir / "categories" / "washer.json").stat().st_mtime_ns == finished
