import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from iapas.cli import main
from iapas.config import Config
from iapas.data.datasets import load_dataset, load_mask
from iapas.data.synth import DEFECTS, SURFACES, SynthSpec, write_synth_dataset
from iapas.evaluate import EvalOptions, run_eval
from iapas.methods import METHODS
from iapas.types import Boxes, Masks, Result


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


@dataclass
class BrightnessMethod:
    """A deterministic non-model method for exercising the evaluation loop: dark pixels score high."""

    calls: int = 0
    stop_after: int = 0
    name: str = "brightness"

    def prepare(self, category, normal_images, kind, out_dir):
        self.kind = kind

    def segment(self, image):
        self.calls += 1
        if self.stop_after and self.calls > self.stop_after:
            raise KeyboardInterrupt
        heat = 1.0 - image.mean(axis=2).astype(np.float32) / 255
        return Result(heat, Boxes.empty(), Masks.empty(*heat.shape), ())


RUNS: dict[str, BrightnessMethod] = {}
METHODS.register("test-brightness")(lambda config, ablate: RUNS.setdefault("current", BrightnessMethod()))


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
