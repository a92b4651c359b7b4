"""`iapas eval`: run a method (or read saved maps) over a dataset's categories, measure them under a
protocol (`iapas/evaluation/protocols.py`), resume after interruption."""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..config import PAPER_SEED, Config, kind_of
from ..data.datasets import Dataset, Sample, limited_samples, load_dataset, load_mask
from ..errors import DatasetError, IapasError
from ..files import atomic_write, atomic_write_text, check_writable_folder, remove_stale_temporaries
from ..runs.fingerprint import EVAL_FIELDS, RunSpec, build_fingerprint, check_fingerprint, record_fingerprint
from ..images import Window, load_image, parse_window
from ..methods import METHODS, Method
from ..methods.hepe import ABLATIONS as HEPE_ABLATIONS
from ..methods.iapas import IAPAS_ABLATIONS
from .metrics import DEFAULT_BINS, PixelMetrics, image_metrics
from .protocols import PROTOCOLS, EvalProtocol, Scorer
from .reports import write_pr_curve, write_tables
from .saved_maps import SavedMaps, save_map

METHOD_ABLATIONS = {"iapas": IAPAS_ABLATIONS, "hepe": HEPE_ABLATIONS}  # what `--ablate` may switch off, per method


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
    protocol: str = "full"  # a name in iapas.evaluation.protocols.PROTOCOLS
    from_maps: Path | None = None  # evaluate these saved maps instead of running the method
    after_image: Callable[[str], None] | None = None  # called with the category after each image (`iapas reproduce`'s one bar)

    @property
    def run_name(self) -> str:
        """Folder of this (method, recipe, ablation) or maps folder: separate runs never resume into each other."""
        if self.from_maps is not None:
            digest = hashlib.sha1(str(Path(self.from_maps).resolve()).encode()).hexdigest()[:8]
            return f"maps-{Path(self.from_maps).resolve().name}-{digest}"
        recipe = f"-{self.recipe}" if self.method == "iapas" and self.recipe != "iapas" else ""
        return self.method + recipe + ("-no-" + "-".join(sorted(self.ablate)) if self.ablate else "")

    @property
    def run_dir(self) -> Path:
        """out_dir/<run_name>, under the protocol's own sub-folder for a protocol other than the default."""
        return Path(self.out_dir) / PROTOCOLS.get(self.protocol).folder / self.run_name


@dataclass
class CategoryState:
    """Running metrics of one category, saved after every image so a re-run continues."""

    pixels: Scorer
    fingerprint: str = ""  # the run's digest: a state saved under other settings is not continued
    done: list[str] = field(default_factory=list)  # dataset-relative image paths
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # decisions (iapas/evaluation/decision_outputs.py): each image's score as `segment` gives it, and, where the
    # protocol's scorer does not see the raw maps (the paper's), a streaming accumulator that does
    segment_scores: list[float] = field(default_factory=list)
    raw_pixels: PixelMetrics | None = None
    raw_out_of_range: bool = False  # a map outside [0, 1] (saved maps may be): no pixel threshold on this scale

    def save(self, path: Path) -> None:
        raw = {f"raw_{key}": value for key, value in self.raw_pixels.state().items()} if self.raw_pixels is not None else {}
        arrays = {"fingerprint": np.array(self.fingerprint), "done": np.array(self.done, dtype=str),
                  "labels": np.array(self.labels, int),
                  "scores": np.array(self.scores, np.float64), "seconds": np.array(self.seconds), **self.pixels.state(),
                  "segment_scores": np.array(self.segment_scores, np.float64),
                  "raw_out_of_range": np.array(self.raw_out_of_range), **raw}
        atomic_write(path, lambda temporary: np.savez(temporary, **arrays))

    @property
    def decision_pixels(self):
        """The accumulator of raw (segment-scale) pixel scores: the protocol's own when it keeps raw maps."""
        if self.raw_out_of_range:
            return None
        return self.raw_pixels if self.raw_pixels is not None else self.pixels

    def add_raw(self, anomaly_map: np.ndarray, mask: np.ndarray, name: str) -> None:
        """Count one map's raw pixels for the pixel threshold (when the protocol's scorer does not already)."""
        if self.raw_pixels is None or self.raw_out_of_range:
            return
        if anomaly_map.size and not (0.0 <= float(anomaly_map.min()) and float(anomaly_map.max()) <= 1.0):
            self.raw_out_of_range = True
            return
        self.raw_pixels.update(anomaly_map, mask, name=name)

    @classmethod
    def load_or_new(cls, path: Path, pixels: Scorer, fingerprint: str = "", raw_pixels: PixelMetrics | None = None) -> "CategoryState":
        state = cls(pixels, fingerprint, raw_pixels=raw_pixels)
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
                if "segment_scores" in data.files:
                    state.segment_scores = [float(x) for x in data["segment_scores"]]
                state.raw_out_of_range = bool(data["raw_out_of_range"]) if "raw_out_of_range" in data.files else False
                if state.raw_pixels is not None and "raw_positive" in data.files:
                    state.raw_pixels.restore({key[4:]: data[key] for key in data.files if key.startswith("raw_")})
                if len(state.segment_scores) != len(state.done):  # saved before segment scores were kept
                    state.segment_scores = list(state.scores)
        return state


def dataset_key(image: Path, root: Path) -> Path:
    """An image's path relative to the dataset root: the same whether the root was given relative or absolute."""
    try:
        return Path(image).resolve().relative_to(Path(root).resolve())
    except ValueError:  # outside the root (a symlinked layout): its absolute path is still one name per image
        return Path(image).resolve()


MapOutcome = tuple[np.ndarray, float, tuple[int, int]]  # (map, the method's image score, (H, W)) of one test image


@dataclass
class MethodMaps:
    """A method as a source of maps: calibrates per category, segments the test images `batch_size` at a time."""

    method: Method
    dataset: str
    bit_window: Window | None = None
    batch_size: int = 1  # config.batch_size: images per call of the method's batched entry point (results equal one-by-one)

    @property
    def default_image_score(self) -> str:
        """The method's own image-score rule (AdaCLIP: its HSF score), else the map's maximum."""
        return getattr(self.method, "default_image_score", "max")

    @property
    def set_size(self) -> int:
        """The fewest images a set-scoring method (MuSc) needs; 0 when each image is scored alone."""
        return int(getattr(self.method, "min_images", 0))

    def prepare(self, category: str, normal_images: list[Path], kind: str, out_dir: Path) -> None:
        if not normal_images:
            raise DatasetError(f"{self.dataset}/{category} has no normal images to calibrate from")
        use_dataset = getattr(self.method, "use_dataset", None)
        if use_dataset is not None:  # per-dataset state: MuSc's RsCIN neighbourhoods, SAA+'s prompt files
            use_dataset(self.dataset)
        self.method.prepare(category, normal_images, kind, out_dir)

    def map_for(self, sample: Sample) -> tuple[np.ndarray, float, tuple[int, int]]:
        """(map, the method's image score, (H, W)) of one test image."""
        pixels = load_image(sample.image_path, bit_window=self.bit_window).pixels
        result = self.method.segment(pixels)
        return result.anomaly_map, result.image_score, pixels.shape[:2]

    def maps_for(self, samples: Sequence[Sample]) -> list[MapOutcome | Exception]:
        """Each sample's `map_for`, the images handed to the method together (its `segment_outcomes`, as the
        engines' `many`); an image that cannot be read or segmented gets its exception in its place."""
        from ..methods.batching import MethodSegment

        loaded: list[np.ndarray | Exception] = []
        for sample in samples:
            try:
                loaded.append(load_image(sample.image_path, bit_window=self.bit_window).pixels)
            except Exception as error:  # noqa: BLE001 - this image's, raised in its turn by the caller
                loaded.append(error)
        ready = [pixels for pixels in loaded if not isinstance(pixels, Exception)]
        if self.set_size:  # one set: the images are scored together, grouped by folder as the set method divides them
            groups = [s.image_path.parent.name for s, p in zip(samples, loaded) if not isinstance(p, Exception)]
            try:
                results = iter(self.method.segment_set(ready, groups))
            except Exception as error:  # noqa: BLE001 - the set's failure is each of its images'
                results = iter([error] * len(ready))
        else:
            results = iter(MethodSegment(self.method).many(ready) if ready else [])
        outcomes: list[MapOutcome | Exception] = []
        for pixels in loaded:
            result = pixels if isinstance(pixels, Exception) else next(results)
            if isinstance(result, Exception):
                outcomes.append(result)
            else:
                outcomes.append((result.anomaly_map, result.image_score, pixels.shape[:2]))
        return outcomes


def image_score_rule(source: MethodMaps | SavedMaps, options: EvalOptions) -> str:
    """The image score used: the one asked for, else the method's own default, else the map's max."""
    return options.image_score or getattr(source, "default_image_score", "max")


def counted_samples(dataset: Dataset, category: str, options: EvalOptions) -> list[Sample]:
    """The test images of `category` that the protocol evaluates, `options.limit` of them drawn with the seed."""
    protocol = PROTOCOLS.get(options.protocol)
    samples = [s for s in dataset.samples(category) if protocol.counts(dataset.name, s)]
    samples = limited_samples(samples, options.limit, options.seed)
    if not samples:
        raise DatasetError(f"{dataset.name}/{category} has no test images that the {protocol.name} protocol evaluates")
    return samples


def calibration_images(dataset: Dataset, category: str, options: EvalOptions) -> list[Path]:
    """The normal images a category is calibrated from: its training split's, or (official recipe) its test split's."""
    if options.normal_split == "test":  # as the official code does (MVTec test/good)
        test_normal = [s.image_path for s in dataset.samples(category) if s.label == 0]
        if test_normal:
            return test_normal
    return dataset.calibration_images(category)


def evaluate_category(
    source: MethodMaps | SavedMaps, dataset: Dataset, category: str, options: EvalOptions, run_dir: Path,
    fingerprint: str = "", samples: list[Sample] | None = None, config: Config | None = None,
) -> dict:
    """Metrics of one category; reads a finished result made under this fingerprint, or continues an interrupted one."""
    result_path = run_dir / "categories" / f"{category}.json"
    if result_path.is_file() and not options.overwrite:
        record = json.loads(result_path.read_text(encoding="utf-8"))
        if record.get("fingerprint", "") == fingerprint:
            return record
    protocol: EvalProtocol = PROTOCOLS.get(options.protocol)
    samples = samples if samples is not None else counted_samples(dataset, category, options)
    normal = calibration_images(dataset, category, options) if options.from_maps is None else []
    kind = kind_of(category, dataset.name)
    prepare_start = time.perf_counter()
    source.prepare(category, normal, kind, run_dir)
    prepare_seconds = time.perf_counter() - prepare_start
    state_path = run_dir / "partial" / f"{category}.npz"
    held_maps = state_path.with_suffix(".maps")  # the paper protocol's per-image maps until the category ends
    if options.overwrite:
        state_path.unlink(missing_ok=True)
        shutil.rmtree(held_maps, ignore_errors=True)
    scorer = protocol.scorer(options.bins, held_maps)
    raw = None if isinstance(scorer, PixelMetrics) else PixelMetrics(bins=options.bins, with_pro=False)
    state = CategoryState.load_or_new(state_path, scorer, fingerprint, raw)
    size = getattr(source, "batch_size", 1)
    if getattr(source, "set_size", 0):  # a set method scores the category's images together: the set is one unit
        if state.done:  # an interrupted set: its images are scored again together (a score depends on the whole set)
            state_path.unlink(missing_ok=True)
            shutil.rmtree(held_maps, ignore_errors=True)
            raw = None if raw is None else PixelMetrics(bins=options.bins, with_pro=False)
            state = CategoryState(protocol.scorer(options.bins, held_maps), fingerprint, raw_pixels=raw)
        size = max(2, len(samples))
    finished = set(state.done)
    todo = [s for s in samples if dataset_key(s.image_path, options.root).as_posix() not in finished]
    rule = image_score_rule(source, options)
    with tqdm(total=len(todo), desc=f"{dataset.name}/{category}", unit="img", disable=not options.progress,
              dynamic_ncols=True) as bar:
        for first in range(0, len(todo), size):
            batch = todo[first:first + size]
            start = time.perf_counter()
            outcomes = source.maps_for(batch) if size > 1 else [source.map_for(sample) for sample in batch]
            share = (time.perf_counter() - start) / len(batch)  # the batch's time, shared as `iapas bench` shares it
            for sample, outcome in zip(batch, outcomes):  # in order: the images before a failure are counted and saved
                if isinstance(outcome, Exception):
                    raise outcome
                start = time.perf_counter()
                anomaly_map, method_score, shape = outcome
                mask = load_mask(sample, *shape, threshold=protocol.mask_threshold)
                state.pixels.update(anomaly_map, mask, name=str(sample.image_path))
                state.labels.append(sample.label)
                state.scores.append(method_score if rule == "method" else protocol.max_score(anomaly_map))
                state.segment_scores.append(method_score)  # Result.image_score: what `segment` decides on, whatever --image-score ranks by
                state.add_raw(anomaly_map, mask, str(sample.image_path))
                state.done.append(dataset_key(sample.image_path, options.root).as_posix())
                state.seconds += share + time.perf_counter() - start
                if options.save_maps:
                    save_map(run_dir / "maps", dataset, sample, anomaly_map)
                state.save(state_path)  # a few KB of histograms: after every image, so an interrupt loses nothing finished
                bar.update(1)
                if options.after_image is not None:
                    options.after_image(category)
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
        **category_decisions(state, category, options, run_dir, source, config),
    }
    write_pr_curve(state.pixels, run_dir / "pr_curves" / f"{category}.png", f"{dataset.name} / {category} ({options.run_name})")
    atomic_write_text(result_path, json.dumps(record, indent=2) + "\n")  # marks the category finished
    state_path.unlink(missing_ok=True)
    shutil.rmtree(held_maps, ignore_errors=True)
    return record


def category_decisions(state: CategoryState, category: str, options: EvalOptions, run_dir: Path,
                       source: MethodMaps | SavedMaps, config: Config | None) -> dict:
    """The category's per-image scores and F1-optimal thresholds, its image curves and its thresholds file."""
    from .decision_outputs import fit_category_thresholds, write_category_thresholds, write_image_curves

    fitted = fit_category_thresholds(state.labels, state.segment_scores, state.decision_pixels)
    write_image_curves(state.labels, state.segment_scores, run_dir / "image_curves" / f"{category}.png",
                       f"{options.dataset} / {category} ({options.run_name})", fitted["image"])
    if options.from_maps is not None or config is None:
        fitted["notes"].append("no thresholds file: saved maps do not say which method and settings made them")
    else:
        from ..decisions.thresholds_file import setup_identity

        method = options.method
        calibration = run_dir / "calibrations" / f"{category}.json"
        map_options = ({"calibration": calibration if calibration.is_file() else None, "no_size_filter": "filter" in options.ablate}
                       if method == "iapas" else {"category": category})
        identity = setup_identity(config, method, map_options)
        written = write_category_thresholds(run_dir / "thresholds" / f"{category}.json", identity, fitted, category,
                                            len(state.done), method == "iapas" and config.scoring.normalise == "minmax")
        fitted["file"] = str(written) if written else None
    scores = [{"image": image, "label": label, "score": score, "segment_score": segment}
              for image, label, score, segment in zip(state.done, state.labels, state.scores, state.segment_scores)]
    return {"thresholds": fitted, "image_scores": scores}


def eval_fingerprint(options: EvalOptions, config: Config) -> dict:
    """What defines an evaluation's results (iapas/runs/fingerprint.py's EVAL_FIELDS); eval calibrates, so its models count."""
    spec = RunSpec(config, options.method, {
        "dataset": options.dataset, "root": options.root, "ablate": options.ablate, "image_score": options.image_score,
        "limit": options.limit, "bins": options.bins, "calibrates": options.from_maps is None,
        "protocol": options.protocol, "from_maps": options.from_maps,
    })
    return build_fingerprint(spec, EVAL_FIELDS)


def versions() -> dict[str, str]:
    import sklearn
    import torch
    import transformers

    from .. import __version__

    return {"iapas": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def check_maps_options(options: EvalOptions) -> None:
    """Options that make no sense with `from_maps` are one-line errors, before anything runs."""
    if options.from_maps is None:
        return
    if options.save_maps:
        raise IapasError("--save-maps and --from-maps exclude each other: the maps are already saved")
    if options.ablate:
        raise IapasError("--ablate needs a method to run, not --from-maps")
    if options.image_score == "method":
        raise IapasError("--image-score method needs a method to run; saved maps give the max of the map")


def run_eval(options: EvalOptions, config: Config) -> Path:
    """Evaluate every chosen category; write per-category JSON, PR curves, tables and run.json."""
    check_writable_folder(options.out_dir)  # a file or a read-only folder: one line, before anything loads
    ablations = METHOD_ABLATIONS.get(options.method, ())
    if options.ablate and not ablations:
        raise IapasError(f"--ablate applies to --method {' and '.join(METHOD_ABLATIONS)} only")
    unknown = sorted(set(options.ablate) - set(ablations))
    if unknown:
        raise IapasError(f"cannot ablate {unknown[0]!r} (choose from {', '.join(ablations)})")
    protocol = PROTOCOLS.get(options.protocol)
    check_maps_options(options)
    dataset = load_dataset(options.dataset, options.root)
    categories = list(options.categories) or dataset.categories
    if options.from_maps is None:
        for category in categories:
            dataset.check(category)  # unknown or empty categories, or no calibration images, fail before any model loads
    required = {category: counted_samples(dataset, category, options) for category in categories}
    run_dir = options.run_dir
    fingerprint = eval_fingerprint(options, config)
    digest = check_fingerprint(run_dir, fingerprint, options.overwrite)  # before any model loads
    started = time.perf_counter()
    if options.from_maps is not None:  # checked against the dataset before any output is written
        source: MethodMaps | SavedMaps = SavedMaps(Path(options.from_maps), dataset, required)
    else:
        from ..acceleration.runtimes import check_method_runtimes

        check_method_runtimes(options.method, config)  # a config file's runtime is not silently ignored either
        source = MethodMaps(METHODS.get(options.method)(config, options.ablate), dataset.name,
                            parse_window(config.bit_window), config.batch_size)
    record_fingerprint(run_dir, fingerprint)
    remove_stale_temporaries(run_dir)
    records = [evaluate_category(source, dataset, category, options, run_dir, digest, required[category], config)
               for category in categories]
    write_tables(records, run_dir, options.dataset, options.run_name, protocol)
    from .decision_outputs import thresholds_table, write_image_scores

    write_image_scores(records, run_dir / "image_scores.csv")
    atomic_write_text(run_dir / "thresholds.md", f"# {options.dataset}: {options.run_name}, F1-optimal thresholds (%)\n\n"
                      "On the maps `iapas segment` writes (each image at its own size, [0, 1]); a score above the threshold is "
                      "anomalous. Files for `segment --thresholds`: thresholds/<category>.json.\n\n" + thresholds_table(records))
    run_info = {
        "dataset": options.dataset,
        "root": str(Path(options.root).resolve()),
        "protocol": protocol.name,
        "protocol_summary": protocol.summary,
        "from_maps": str(options.from_maps) if options.from_maps is not None else None,
        "method": options.method if options.from_maps is None else None,
        "ablate": sorted(options.ablate),
        "categories": categories,
        "seed": config.calibration.seed,
        "bins": options.bins,
        "image_score": image_score_rule(source, options),
        "config": config.to_dict(),
        "versions": versions(),
        "seconds": time.perf_counter() - started,
    }
    atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2) + "\n")
    return run_dir
