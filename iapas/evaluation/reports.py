"""Evaluation outputs: tables in the paper's format (markdown, CSV), PR curves, paper comparison."""
from __future__ import annotations

import csv
import math
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..methods.iapas import IAPAS_ABLATIONS
from .metrics import f1_scores

if TYPE_CHECKING:
    from .protocols import EvalProtocol, Scorer

PAPER_TABLE = Path(__file__).parents[1] / "resources" / "paper_table1.toml"
METRIC_COLUMNS = ("pixel_ap", "pixel_f1_max", "pixel_auroc", "pixel_aupro", "image_auroc", "image_ap", "image_f1_max")


def percent(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def mean_row(records: Sequence[dict], rounding: int | None = None) -> dict[str, float]:
    """Mean of each metric over categories, NaNs (e.g. no anomalous pixel) skipped.

    With `rounding`, each category's value in % is first rounded to that many decimals, as the paper's
    code builds its mean from its rounded per-category csv (sybeam27/IAP-ZSAS test_zsas.py).
    """
    means = {}
    for column in METRIC_COLUMNS:
        values = [r["metrics"].get(column, float("nan")) for r in records]
        if rounding is not None:
            values = [v if math.isnan(v) else round(100 * v, rounding) / 100 for v in values]
        finite = [v for v in values if not math.isnan(v)]
        means[column] = float(np.mean(finite)) if finite else float("nan")
    return means


def write_tables(records: Sequence[dict], run_dir: Path, dataset: str, run_name: str, protocol: "EvalProtocol | None" = None) -> None:
    """table.md (Table 1 columns AP, F1-max first, then the rest) and table.csv, categories and mean.

    The markdown header names the protocol the numbers were measured under.
    """
    rounding = protocol.mean_rounding if protocol is not None else None
    rows = [(r["category"], r["metrics"]) for r in records] + [("mean", mean_row(records, rounding))]
    with open(run_dir / "table.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", *METRIC_COLUMNS])
        for name, metrics in rows:
            writer.writerow([name, *(f"{100 * metrics.get(c, float('nan')):.4f}" for c in METRIC_COLUMNS)])
    header = "| category | AP | F1-max | pixel AUROC | AUPRO | image AUROC | image AP | image F1-max |"
    title = f"# {dataset}: {run_name} (%), protocol {protocol.name}" if protocol is not None else f"# {dataset}: {run_name} (%)"
    lines = [title, ""] + ([f"Protocol {protocol.name}: {protocol.summary}.", ""] if protocol is not None else []) + [header, "|" + "---|" * 8]
    for name, metrics in rows:
        cells = " | ".join(percent(metrics.get(c, float("nan"))) for c in METRIC_COLUMNS)
        lines.append(f"| {'**mean**' if name == 'mean' else name} | {cells} |")
    (run_dir / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_ablation_table(run_dir.parent, dataset)


def write_ablation_table(out_dir: Path, dataset: str) -> None:
    """table3.md: one row per iapas run folder (ablation) found under out_dir, in the paper's Table 3 format."""
    rows = []
    for table in sorted(out_dir.glob("iapas*/table.csv")):
        with open(table, newline="", encoding="utf-8") as handle:
            mean = next(r for r in csv.DictReader(handle) if r["category"] == "mean")
        ablated = table.parent.name.removeprefix("iapas").removeprefix("-no-").split("-")
        marks = ["X" if step in ablated else "O" for step in IAPAS_ABLATIONS]
        rows.append((marks, float(mean["pixel_ap"]), float(mean["pixel_f1_max"])))
    if not rows:
        return
    lines = [f"# {dataset}: ablation (Table 3 format, %)", "", "| Step 1-1 tagging | Step 1-3 LLM | Step 2-2 filter | AP | F1-max |",
             "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(marks)} | {ap:.2f} | {f1:.2f} |" for marks, ap, f1 in sorted(rows, key=lambda r: r[1])]
    (out_dir / "table3.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_pr_curve(pixels: "Scorer", path: Path, title: str) -> None:
    """The pixel precision-recall curve with its AP and the F1-max point, as a PNG."""
    # a Figure of its own, drawn by Agg directly: no pyplot state and no process-wide backend switch,
    # so a caller's interactive matplotlib session is left as it was
    from matplotlib.figure import Figure

    precision, recall = pixels.pr_curve()
    summary = pixels.summary()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(5, 4.2), dpi=110)
    axes = figure.subplots()
    axes.step(np.concatenate([[0], recall]), np.concatenate([[1], precision]), where="pre", label=f"AP {percent(summary['pixel_ap'])}%")
    best = int(np.argmax(f1_scores(precision, recall)))
    axes.plot(recall[best], precision[best], "o", color="crimson", label=f"F1-max {percent(summary['pixel_f1_max'])}%")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)


def paper_comparison(dataset: str, run_dir: Path) -> str | None:
    """A markdown table of our mean AP and F1-max beside the paper's Table 1 for the dataset."""
    paper = tomllib.loads(PAPER_TABLE.read_text(encoding="utf-8"))
    if dataset not in paper:
        return None
    with open(run_dir / "table.csv", newline="", encoding="utf-8") as handle:
        mean = next(r for r in csv.DictReader(handle) if r["category"] == "mean")
    entry = paper[dataset]
    lines = [f"{entry['name']} ({entry['kind']}), paper Table 1 vs this run (%)", "", "| method | AP | F1-max |", "|---|---|---|"]
    for method, ap, f1 in zip(paper["methods"], entry["ap"], entry["f1_max"]):
        lines.append(f"| {method} (paper) | {ap:.2f} | {f1:.2f} |")
    lines.append(f"| **{run_dir.name} (this run)** | {float(mean['pixel_ap']):.2f} | {float(mean['pixel_f1_max']):.2f} |")
    return "\n".join(lines)
