"""`iapas eval`: run a method over a dataset's categories, stream the metrics, resume after interruption."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .config import PAPER_SEED, Config, kind_of
from .data.datasets import Dataset, Sample, limited_samples, load_dataset, load_mask
from .errors import IapasError
from .files import atomic_write, atomic_write_text, check_writable_folder, remove_stale_temporaries
from .fingerprint import EVAL_FIELDS, RunSpec, build_fingerprint, check_fingerprint, record_fingerprint
from .images import Window, load_image, parse_window
from .methods import METHODS, Method
from .methods.iapas import IAPAS_ABLATIONS
from .metrics import DEFAULT_BINS, PixelMetrics, image_metrics
from .reports import write_pr_curve, write_tables


@dataclass
class EvalOptions:
    """What to evaluate and where to write it."""

    dataset: str
    root: Path
    out_dir: Path
    method: str = "iapas"
    categories: Sequence[str] = ()
    ablate: Sequence[str] = ()
    save_maps: bool = False
    bins: int = DEFAULT_BINS
    image_score: str = ""  # "max" of the map, "method" for the method's own score, "": the method's default rule
    progress: bool = True
    limit: int = 0  # at most this many test images per category (0: all), drawn with `seed`; for smoke runs
    seed: int = PAPER_SEED
    recipe: str = "iapas"  # config.recipe; a run of another recipe than the default gets its own folder
    normal_split: str = "train"  # config.calibration.normal_split: where calibration draws its normal images
    overwrite: bool = False  # redo finished categories (needed when the fingerprint changed)

    @property
    def run_name(self) -> str:
        """Folder of this (method, recipe, ablation): separate runs never resume into each other."""
        recipe = f"-{self.recipe}" if self.method == "iapas" and self.recipe != "iapas" else ""
        return self.method + recipe + ("-no-" + "-".join(sorted(self.ablate)) if self.ablate else "")


@dataclass
class CategoryState:
    """Running metrics of one category, saved after every image so a re-run continues."""

    pixels: PixelMetrics
    fingerprint: str = ""  # the run's digest: a state saved under other settings is not continued
    done: list[str] = field(default_factory=list)  # dataset-relative image paths
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        arrays = {"fingerprint": np.array(self.fingerprint), "done": np.array(self.done, dtype=str),
                  "labels": np.array(self.labels, int),
                  "scores": np.array(self.scores, np.float64), "seconds": np.array(self.seconds), **self.pixels.state()}
        atomic_write(path, lambda temporary: np.savez(temporary, **arrays))

    @classmethod
    def load_or_new(cls, path: Path, bins: int, fingerprint: str = "") -> "CategoryState":
        state = cls(PixelMetrics(bins=bins), fingerprint)
        if path.is_file():
            with np.load(path) as data:
                saved = str(data["fingerprint"]) if "fingerprint" in data.files else ""
                if saved != fingerprint:
                    return state
                state.pixels.restore(dict(data))
                state.done = [str(x) for x in data["done"]]
                state.labels = [int(x) for x in data["labels"]]
                state.scores = [float(x) for x in data["scores"]]
                state.seconds = float(data["seconds"])
        return state


def dataset_key(image: Path, root: Path) -> Path:
    """An image's path relative to the dataset root: the same whether the root was given relative or absolute."""
    try:
        return Path(image).resolve().relative_to(Path(root).resolve())
    except ValueError:  # outside the root (a symlinked layout): its absolute path is still one name per image
        return Path(image).resolve()


def map_path(run_dir: Path, key: Path) -> Path:
    """Where --save-maps puts an image's map: its dataset-relative path, suffix kept (KSDD1's kosNN/PartK stay apart)."""
    relative = key.relative_to(key.anchor) if key.is_absolute() else key
    return run_dir / "maps" / f"{relative.as_posix()}.npy"


def image_score_rule(method: Method, options: EvalOptions) -> str:
    """The image score used: the one asked for, else the method's own default (AdaCLIP: its HSF score), else the map's max."""
    return options.image_score or getattr(method, "default_image_score", "max")


def evaluate_category(
    method: Method, dataset: Dataset, category: str, options: EvalOptions, run_dir: Path,
    fingerprint: str = "", bit_window: Window | None = None,
) -> dict:
    """Metrics of one category; reads a finished result made under this fingerprint, or continues an interrupted one."""
    result_path = run_dir / "categories" / f"{category}.json"
    if result_path.is_file() and not options.overwrite:
        record = json.loads(result_path.read_text(encoding="utf-8"))
        if record.get("fingerprint", "") == fingerprint:
            return record
    samples: list[Sample] = dataset.samples(category)
    samples = limited_samples(samples, options.limit, options.seed)
    dataset.check(category)
    # the official recipe draws from the test split's normal images, as the official code does (MVTec test/good)
    test_normal = [s.image_path for s in dataset.samples(category) if s.label == 0]
    normal = (test_normal or dataset.calibration_images(category)) if options.normal_split == "test" \
        else dataset.calibration_images(category)
    kind = kind_of(category, dataset.name)
    prepare_start = time.perf_counter()
    method.prepare(category, normal, kind, run_dir)
    prepare_seconds = time.perf_counter() - prepare_start
    state_path = run_dir / "partial" / f"{category}.npz"
    state = CategoryState(PixelMetrics(bins=options.bins), fingerprint) if options.overwrite else \
        CategoryState.load_or_new(state_path, options.bins, fingerprint)
    finished = set(state.done)
    todo = [s for s in samples if dataset_key(s.image_path, options.root).as_posix() not in finished]
    bar = tqdm(todo, desc=f"{dataset.name}/{category}", unit="img", disable=not options.progress, dynamic_ncols=True)
    for sample in bar:
        start = time.perf_counter()
        key = dataset_key(sample.image_path, options.root)
        pixels = load_image(sample.image_path, bit_window=bit_window).pixels
        result = method.segment(pixels)
        mask = load_mask(sample, *pixels.shape[:2])
        state.pixels.update(result.anomaly_map, mask, name=str(sample.image_path))
        state.labels.append(sample.label)
        score = result.score(image_score_rule(method, options))
        state.scores.append(score)
        state.done.append(key.as_posix())
        state.seconds += time.perf_counter() - start
        if options.save_maps:
            atomic_write(map_path(run_dir, key), lambda temporary: np.save(temporary, result.anomaly_map))
        state.save(state_path)  # a few KB of histograms: after every image, so an interrupt loses nothing finished
    metrics = {**state.pixels.summary(), **image_metrics(np.array(state.labels), np.array(state.scores))}
    record = {
        "category": category,
        "kind": kind,
        "images": len(state.done),
        "anomalous": int(sum(state.labels)),
        "metrics": metrics,
        "seconds_per_image": state.seconds / max(1, len(state.done)),
        "prepare_seconds": prepare_seconds,
        "fingerprint": fingerprint,
    }
    write_pr_curve(state.pixels, run_dir / "pr_curves" / f"{category}.png", f"{dataset.name} / {category} ({options.run_name})")
    atomic_write_text(result_path, json.dumps(record, indent=2) + "\n")  # marks the category finished
    state_path.unlink(missing_ok=True)
    return record


def eval_fingerprint(options: EvalOptions, config: Config) -> dict:
    """What defines an evaluation's results (iapas/fingerprint.py's EVAL_FIELDS); eval calibrates, so its models count."""
    spec = RunSpec(config, options.method, {
        "dataset": options.dataset, "root": options.root, "ablate": options.ablate, "image_score": options.image_score,
        "limit": options.limit, "bins": options.bins, "calibrates": True,
    })
    return build_fingerprint(spec, EVAL_FIELDS)


def versions() -> dict[str, str]:
    import sklearn
    import torch
    import transformers

    from . import __version__

    return {"iapas": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def run_eval(options: EvalOptions, config: Config) -> Path:
    """Evaluate every chosen category; write per-category JSON, PR curves, tables and run.json."""
    check_writable_folder(options.out_dir)  # a file or a read-only folder: one line, before anything loads
    unknown = sorted(set(options.ablate) - set(IAPAS_ABLATIONS))
    if unknown:
        raise IapasError(f"cannot ablate {unknown[0]!r} (choose from {', '.join(IAPAS_ABLATIONS)})")
    if options.ablate and options.method != "iapas":
        raise IapasError("--ablate applies to --method iapas only")
    dataset = load_dataset(options.dataset, options.root)
    categories = list(options.categories) or dataset.categories
    for category in categories:
        dataset.check(category)  # unknown or empty categories, or no calibration images, fail before any model loads
    run_dir = Path(options.out_dir) / options.run_name
    window = parse_window(config.bit_window)
    fingerprint = eval_fingerprint(options, config)
    digest = check_fingerprint(run_dir, fingerprint, options.overwrite)  # before any model loads
    started = time.perf_counter()
    method = METHODS.get(options.method)(config, options.ablate)
    record_fingerprint(run_dir, fingerprint)
    remove_stale_temporaries(run_dir)
    records = [evaluate_category(method, dataset, category, options, run_dir, digest, window) for category in categories]
    write_tables(records, run_dir, options.dataset, options.run_name)
    run_info = {
        "dataset": options.dataset,
        "root": str(Path(options.root).resolve()),
        "method": options.method,
        "ablate": sorted(options.ablate),
        "categories": categories,
        "seed": config.calibration.seed,
        "bins": options.bins,
        "image_score": image_score_rule(method, options),
        "config": config.to_dict(),
        "versions": versions(),
        "seconds": time.perf_counter() - started,
    }
    atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2) + "\n")
    return run_dir
