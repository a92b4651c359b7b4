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

from .config import Config, kind_of
from .data.datasets import Dataset, Sample, load_dataset, load_mask
from .errors import DatasetError, IapasError
from .files import atomic_write, atomic_write_text
from .images import load_image
from .methods import METHODS, Method
from .methods.iapas import IAPAS_ABLATIONS
from .metrics import DEFAULT_BINS, PixelMetrics, image_metrics
from .reports import write_pr_curve, write_tables

TEXTURE_DATASETS = frozenset({"ksdd1", "mtd", "dtd", "dagm"})


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
    limit: int = 0  # at most this many test images per category (0: all); for smoke runs

    @property
    def run_name(self) -> str:
        """Folder of this (method, ablation): separate runs never resume into each other."""
        return self.method + ("-no-" + "-".join(sorted(self.ablate)) if self.ablate else "")


@dataclass
class CategoryState:
    """Running metrics of one category, saved after every image so a re-run continues."""

    pixels: PixelMetrics
    done: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        arrays = {"done": np.array(self.done, dtype=str), "labels": np.array(self.labels, int),
                  "scores": np.array(self.scores, np.float64), "seconds": np.array(self.seconds), **self.pixels.state()}
        atomic_write(path, lambda temporary: np.savez(temporary, **arrays))

    @classmethod
    def load_or_new(cls, path: Path, bins: int) -> "CategoryState":
        state = cls(PixelMetrics(bins=bins))
        if path.is_file():
            with np.load(path) as data:
                state.pixels.restore(dict(data))
                state.done = [str(x) for x in data["done"]]
                state.labels = [int(x) for x in data["labels"]]
                state.scores = [float(x) for x in data["scores"]]
                state.seconds = float(data["seconds"])
        return state


def kind_for(dataset: str, category: str) -> str:
    return "texture" if dataset in TEXTURE_DATASETS else kind_of(category)


def image_score_rule(method: Method, options: EvalOptions) -> str:
    """The image score used: the one asked for, else the method's own default (AdaCLIP: its HSF score), else the map's max."""
    return options.image_score or getattr(method, "default_image_score", "max")


def evaluate_category(
    method: Method, dataset: Dataset, category: str, options: EvalOptions, run_dir: Path
) -> dict:
    """Metrics of one category; reads a finished result, or continues an interrupted one."""
    result_path = run_dir / "categories" / f"{category}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    samples: list[Sample] = dataset.samples(category)
    if options.limit:
        samples = samples[: options.limit]
    if not samples:
        raise DatasetError(f"{dataset.name}/{category} has no test images")
    normal = dataset.normal.get(category) or [s.image_path for s in samples if s.label == 0]
    if not normal:
        raise DatasetError(f"{dataset.name}/{category} has no normal images to calibrate from")
    kind = kind_for(dataset.name, category)
    prepare_start = time.perf_counter()
    method.prepare(category, normal, kind, run_dir)
    prepare_seconds = time.perf_counter() - prepare_start
    state_path = run_dir / "partial" / f"{category}.npz"
    state = CategoryState.load_or_new(state_path, options.bins)
    finished = set(state.done)
    todo = [s for s in samples if str(s.image_path) not in finished]
    bar = tqdm(todo, desc=f"{dataset.name}/{category}", unit="img", disable=not options.progress, dynamic_ncols=True)
    for sample in bar:
        start = time.perf_counter()
        pixels = load_image(sample.image_path).pixels
        result = method.segment(pixels)
        mask = load_mask(sample, *pixels.shape[:2])
        state.pixels.update(result.anomaly_map, mask)
        state.labels.append(sample.label)
        score = result.image_score if image_score_rule(method, options) == "method" else float(result.anomaly_map.max())
        state.scores.append(score)
        state.done.append(str(sample.image_path))
        state.seconds += time.perf_counter() - start
        if options.save_maps:
            maps = run_dir / "maps" / category
            maps.mkdir(parents=True, exist_ok=True)
            np.save(maps / f"{sample.defect_type}__{sample.image_path.stem}.npy", result.anomaly_map)
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
    }
    write_pr_curve(state.pixels, run_dir / "pr_curves" / f"{category}.png", f"{dataset.name} / {category} ({options.run_name})")
    atomic_write_text(result_path, json.dumps(record, indent=2) + "\n")  # marks the category finished
    state_path.unlink(missing_ok=True)
    return record


def versions() -> dict[str, str]:
    import sklearn
    import torch
    import transformers

    from . import __version__

    return {"iapas": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def run_eval(options: EvalOptions, config: Config) -> Path:
    """Evaluate every chosen category; write per-category JSON, PR curves, tables and run.json."""
    unknown = sorted(set(options.ablate) - set(IAPAS_ABLATIONS))
    if unknown:
        raise IapasError(f"cannot ablate {unknown[0]!r} (choose from {', '.join(IAPAS_ABLATIONS)})")
    if options.ablate and options.method != "iapas":
        raise IapasError("--ablate applies to --method iapas only")
    dataset = load_dataset(options.dataset, options.root)
    categories = list(options.categories) or dataset.categories
    for category in categories:
        dataset.samples(category)  # unknown categories fail before any model loads
    run_dir = Path(options.out_dir) / options.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    method = METHODS.get(options.method)(config, options.ablate)
    records = [evaluate_category(method, dataset, category, options, run_dir) for category in categories]
    write_tables(records, run_dir, options.dataset, options.run_name)
    run_info = {
        "dataset": options.dataset,
        "root": str(options.root),
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
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    return run_dir
