"""A reproduced table beside the paper's: ours, paper and difference per (row, dataset, metric) as markdown, CSV and a figure."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_write, atomic_write_text
from .tables import METRIC_TITLES

if TYPE_CHECKING:
    from .run import Outcome  # run.py writes the report: the report only reads its outcome

CSV_COLUMNS = ("row", "dataset", "metric", "ours", "paper", "difference", "note")


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def cells(outcome: Outcome) -> list[dict]:
    """One dict per (row, dataset, metric): ours and the paper's in %, their difference (ours - paper), the row's note."""
    paper = outcome.spec.paper()
    entries = []
    for row in outcome.spec.rows:
        for dataset in outcome.datasets:
            ours_means = outcome.ours.get((row.label, dataset))
            for metric in outcome.spec.metrics:
                ours = 100 * ours_means[metric] if ours_means is not None and metric in ours_means else None
                theirs = paper.get((row.label, dataset), {}).get(metric)
                difference = ours - theirs if ours is not None and theirs is not None and not math.isnan(ours) else None
                entries.append({"row": row.label, "dataset": dataset, "metric": metric, "ours": ours, "paper": theirs,
                                "difference": difference, "note": outcome.notes.get(row.label, "")})
    return entries


def markdown(outcome: Outcome, entries: list[dict], limited: bool) -> str:
    """One table per metric: rows x datasets, each cell 'ours / paper (difference)'."""
    spec = outcome.spec
    lines = [f"# {spec.title}", "", f"Protocol: {spec.protocol}. Each cell: ours / paper (ours - paper), in %; "
             "'-' where there is no number."]
    if spec.note:
        lines += ["", spec.note]
    if limited:
        lines += ["", "**Smoke run (--limit): a subset of the test images, so these are not comparable with the paper.**"]
    index = {(e["row"], e["dataset"], e["metric"]): e for e in entries}
    for metric in spec.metrics:
        lines += ["", f"## {METRIC_TITLES.get(metric, metric)}", "", "| method | " + " | ".join(outcome.datasets) + " |",
                  "|---|" + "---|" * len(outcome.datasets)]
        for row in spec.rows:
            texts = []
            for dataset in outcome.datasets:
                entry = index[row.label, dataset, metric]
                ours, theirs, difference = entry["ours"], entry["paper"], entry["difference"]
                text = f"{_number(ours) or '-'} / {_number(theirs) or '-'}"
                texts.append(text + (f" ({difference:+.2f})" if difference is not None else ""))
            lines.append(f"| {row.label} | " + " | ".join(texts) + " |")
    notes = [note for note in dict.fromkeys(outcome.notes.values()) if note]
    if notes or outcome.missing:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes] + [f"- missing {item.line()}" for item in outcome.missing]
    return "\n".join(lines) + "\n"


def csv_text(entries: list[dict]) -> str:
    handle = io.StringIO()
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow({**entry, **{k: _number(entry[k]) for k in ("ours", "paper", "difference")}})
    return handle.getvalue()


def write_figure(outcome: Outcome, entries: list[dict], path: Path) -> None:
    """Ours against the paper's, one panel per metric, one marker per row, the diagonal where they agree."""
    from matplotlib.figure import Figure  # Agg directly: no pyplot state (as reports.write_pr_curve)

    metrics = outcome.spec.metrics
    figure = Figure(figsize=(4.4 * len(metrics), 4.2), dpi=110)
    axes_list = figure.subplots(1, len(metrics), squeeze=False)[0]
    markers = "osD^v<>ph*"
    for axes, metric in zip(axes_list, metrics):
        top = 1.0
        for number, row in enumerate(outcome.spec.rows):
            pairs = [(e["paper"], e["ours"]) for e in entries if e["row"] == row.label and e["metric"] == metric
                     and e["paper"] is not None and e["ours"] is not None and not math.isnan(e["ours"])]
            if pairs:
                xs, ys = zip(*pairs)
                axes.plot(xs, ys, markers[number % len(markers)], label=row.label, alpha=0.8)
                top = max(top, *xs, *ys)
        axes.plot([0, top * 1.05], [0, top * 1.05], color="grey", linewidth=0.8)
        axes.set(xlabel="paper (%)", ylabel="ours (%)", title=METRIC_TITLES.get(metric, metric),
                 xlim=(0, top * 1.05), ylim=(0, top * 1.05))
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper left", fontsize="small")
    figure.suptitle(outcome.spec.title, fontsize="small")
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))


def write_report(outcome: Outcome, out_dir: Path, limited: bool = False) -> dict[str, Path]:
    """<table>.md, <table>.csv and <table>.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = cells(outcome)
    name = outcome.spec.name
    paths = {"markdown": out_dir / f"{name}.md", "csv": out_dir / f"{name}.csv", "figure": out_dir / f"{name}.png"}
    atomic_write_text(paths["markdown"], markdown(outcome, entries, limited))
    atomic_write_text(paths["csv"], csv_text(entries))
    write_figure(outcome, entries, paths["figure"])
    return paths
