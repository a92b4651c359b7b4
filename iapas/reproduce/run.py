"""Running a table: every (row, dataset) cell through `iapas eval`'s machinery, resumable per category, one progress bar."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config, build_config
from ..errors import ConfigError, IapasError
from .locate import Missing, MissingInputs, dataset_roots, download_hint, method_weights
from .tables import TABLES, Row, TableSpec


@dataclass
class ReproduceOptions:
    """Which table, where its datasets are, where to write; `overrides` are config keys laid over each row's recipe."""

    table: str
    out_dir: Path
    data_root: Path | None = None
    dataset_roots: Mapping[str, Path] = field(default_factory=dict)  # dataset -> folder, beside or instead of data_root
    overrides: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"weights_dir": "weights", "device": "cuda"}
    rows: Sequence[str] = ()  # only these rows (paper labels or iapas method names); () = every row iapas can run
    datasets: Sequence[str] = ()  # only these datasets; () = the table's
    limit: int = 0  # at most this many test images per category (smoke runs; the numbers are then not the paper's)
    skip_missing: bool = False  # run what is there, report the rest as not run, instead of refusing
    overwrite: bool = False  # redo finished categories (needed when the settings changed)
    progress: bool = True


@dataclass(frozen=True)
class Cell:
    """One (row, dataset) of a table: its evaluation options and config."""

    row: Row
    dataset: str
    options: Any  # EvalOptions
    config: Config


@dataclass
class Outcome:
    """A table's results: our means per (row label, dataset), and why a row or dataset was not run."""

    spec: TableSpec
    datasets: tuple[str, ...] = ()  # the columns: the table's datasets that were asked for
    ours: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # row label -> note
    missing: list[Missing] = field(default_factory=list)
    run_dirs: dict[tuple[str, str], Path] = field(default_factory=dict)


def row_config(row: Row, overrides: Mapping[str, Any]) -> Config:
    """The row's recipe with the user's settings laid over it."""
    return build_config(row.recipe).updated(dict(overrides))


def chosen_rows(spec: TableSpec, wanted: Sequence[str]) -> list[Row]:
    """The table's rows, or those named (by paper label or method), unknown names refused."""
    if not wanted:
        return list(spec.rows)
    names = {name.lower() for name in wanted}
    known = {row.label.lower() for row in spec.rows} | {row.method for row in spec.rows if row.method}
    unknown = sorted(names - known)
    if unknown:
        raise ConfigError(f"{spec.name} has no row {unknown[0]!r} (rows: {', '.join(row.label for row in spec.rows)})")
    return [row for row in spec.rows if row.label.lower() in names or row.method in names]


def plan(options: ReproduceOptions) -> tuple[TableSpec, list[Cell], Outcome]:
    """The cells to run and every missing input, all found before anything runs."""
    from ..evaluation.evaluate import EvalOptions
    from ..methods import METHODS

    spec = TABLES.get(options.table)
    unknown = sorted(set(options.datasets) - set(spec.datasets))
    if unknown:
        raise ConfigError(f"{spec.name} has no dataset {unknown[0]!r} (datasets: {', '.join(spec.datasets)})")
    datasets = [name for name in spec.datasets if not options.datasets or name in options.datasets]
    outcome = Outcome(spec, tuple(datasets))
    runnable = []
    chosen = chosen_rows(spec, options.rows)
    for row in spec.rows:
        if not row.method:  # the paper's numbers only, whichever rows were asked for
            outcome.notes[row.label] = row.note
        elif row not in chosen:
            continue
        elif row.method not in METHODS.names():
            outcome.notes[row.label] = (f"{row.label}: not in iapas yet; once it is, train it first: {row.trained_by}" if row.trained_by
                                        else f"{row.label}: iapas has no method {row.method!r} in this build; the paper's numbers only")
        else:
            runnable.append(row)
            if row.note:
                outcome.notes[row.label] = row.note
    roots, missing = dataset_roots(datasets, options.data_root, options.dataset_roots)
    configs = {row.key: row_config(row, options.overrides) for row in runnable}
    cell_configs: dict[tuple[str, str], Config] = {}
    lacking_rows: set[str] = set()
    shared: dict[tuple[str, str], list[Row]] = {}  # rows of one method and recipe load the same weights: listed once
    for row in runnable:
        shared.setdefault((row.method, row.recipe), []).append(row)
    for group in shared.values():
        label = group[0].label + (f" (and {len(group) - 1} more rows)" if len(group) > 1 else "")
        lacking = method_weights(group[0].method, configs[group[0].key], label)
        missing += lacking
        lacking_rows.update(row.key for row in group if lacking)
    for row in runnable:
        for dataset in datasets:  # checkpoints are listed even for a dataset that is missing itself
            overrides, lacking = checkpoint_setting(row, dataset, configs[row.key], roots)
            cell_configs[row.key, dataset] = configs[row.key].updated(overrides) if overrides else configs[row.key]
            missing += [item for item in lacking if item not in missing]
            if lacking:
                lacking_rows.add(row.key)
    outcome.missing = missing
    if missing and not options.skip_missing:
        raise MissingInputs(missing)
    cells = []
    for row in runnable:
        if row.key in lacking_rows:
            outcome.notes[row.label] = f"{row.label}: not run (inputs missing, listed below)"
            continue
        for dataset, root in roots.items():
            config = cell_configs[row.key, dataset]
            eval_options = EvalOptions(
                dataset=dataset, root=root, out_dir=Path(options.out_dir) / dataset, method=row.method, ablate=row.ablate,
                progress=False, limit=options.limit, seed=config.calibration.seed, recipe=config.recipe,
                normal_split=config.calibration.normal_split, protocol=spec.protocol, overwrite=options.overwrite,
            )
            cells.append(Cell(row, dataset, eval_options, config))
    return spec, cells, outcome


# the config key naming a learned method's checkpoint (the others read clip_methods.prompts)
PROMPT_KEYS = {"adaclip": "clip_methods.adaclip_prompts", "genclip": "clip_methods.genclip_prompts"}


def checkpoint_setting(row: Row, dataset: str, config: Config, roots: Mapping[str, Path]) -> tuple[dict[str, str], list[Missing]]:
    """The config override that points `row` at its checkpoint for `dataset`, and the checkpoint when it is missing."""
    from ..weights.manifest import is_present, load_manifest

    rule = row.checkpoint_for(dataset)
    key = PROMPT_KEYS.get(row.method, "clip_methods.prompts")
    kind, _, name = rule.partition(":")
    if kind == "manifest":
        entry = next(entry for entry in load_manifest() if entry.name == name)
        lacking = [] if is_present(entry, Path(config.weights_dir)) else [
            Missing(f"{row.label}: released checkpoint {entry.location(Path(config.weights_dir))}",
                    download_hint(name))]
        return {key: name}, lacking
    if kind == "train":
        path = Path(config.weights_dir) / f"{row.method}-{name}" / f"{row.method}_prompts.pt"
        root = roots.get(name, Path(f"<{name} root>"))
        recipe = f" --recipe {row.recipe}" if row.recipe != "iapas" else ""  # trained under the rules it is tested with
        command = f"iapas train {row.method}{recipe} --dataset {name} --root {root} -o {path.parent}"
        released = dict(row.released).get(name)
        where = (f"train it (`{command}`), or put the released {released} there" if released
                 else f"no checkpoint is released; train it first: `{command}`")
        lacking = [] if path.is_file() else [Missing(f"{row.label}: checkpoint trained on {name} ({path})", where)]
        return {key: str(path)}, lacking
    return {}, []


def cell_digest(cell: Cell) -> str:
    """The digest every finished category of this cell carries (iapas/runs/fingerprint.py)."""
    from ..evaluation.evaluate import eval_fingerprint
    from ..runs.fingerprint import digest

    return digest(eval_fingerprint(cell.options, cell.config))


def finished_records(cell: Cell, categories: Sequence[str], done_digest: str) -> dict[str, dict]:
    """The categories of a cell already finished under this digest (their result files), by name."""
    records = {}
    for category in categories:
        path = cell.options.run_dir / "categories" / f"{category}.json"
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("fingerprint") == done_digest:
                records[category] = record
    return records


def run_table(options: ReproduceOptions) -> Outcome:
    """Run every cell (finished categories are read, not redone) and collect the means; writes nothing but the runs."""
    from tqdm import tqdm

    from ..data.datasets import load_dataset
    from ..evaluation.evaluate import counted_samples, run_eval
    from ..evaluation.protocols import PROTOCOLS
    from ..evaluation.reports import mean_row

    spec, cells, outcome = plan(options)
    rounding = PROTOCOLS.get(spec.protocol).mean_rounding
    sizes: dict[tuple[str, str], dict[str, int]] = {}
    done: dict[tuple[str, str], dict[str, dict]] = {}
    for cell in cells:  # image counts and finished categories, for the one bar's total and its time left
        dataset = load_dataset(cell.dataset, cell.options.root)
        sizes[cell.row.key, cell.dataset] = {c: len(counted_samples(dataset, c, cell.options)) for c in dataset.categories}
        done[cell.row.key, cell.dataset] = finished_records(cell, dataset.categories, cell_digest(cell))
    total = sum(sum(counts.values()) for counts in sizes.values())
    initial = sum(sizes[key][c] for key, records in done.items() for c in records)
    with tqdm(total=total, initial=initial, unit="img", desc=f"reproduce {spec.name}", disable=not options.progress,
              dynamic_ncols=True) as bar:
        for cell in cells:
            key = (cell.row.key, cell.dataset)
            categories = list(sizes[key])
            if len(done[key]) < len(categories):  # a cell with every category finished loads no model
                bar.set_postfix_str(f"{cell.row.label} / {cell.dataset}")
                cell.options.after_image = lambda category, cell=cell: (
                    bar.set_postfix_str(f"{cell.row.label} / {cell.dataset} / {category}", refresh=False), bar.update(1))
                started = time.perf_counter()
                run_eval(cell.options, cell.config)
                cell.options.after_image = None
                if options.progress:
                    bar.write(f"{cell.row.label} / {cell.dataset}: done in {time.perf_counter() - started:.0f} s")
            records = finished_records(cell, categories, cell_digest(cell))
            if len(records) != len(categories):
                raise IapasError(f"{cell.options.run_dir} lacks finished categories after its run")
            outcome.ours[cell.row.label, cell.dataset] = mean_row([records[c] for c in categories], rounding)
            outcome.run_dirs[cell.row.label, cell.dataset] = cell.options.run_dir
    return outcome


def reproduce(options: ReproduceOptions) -> dict[str, Path]:
    """Run the table and write ours / paper / difference (markdown, CSV, figure) into `out_dir`; returns the files."""
    from .report import write_report

    outcome = run_table(options)
    return write_report(outcome, Path(options.out_dir), limited=options.limit > 0)
