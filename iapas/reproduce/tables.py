"""What each reproducible table is: its rows (a paper's method, iapas's method if it has one), datasets, protocol, numbers."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..registry import Registry

RESOURCES = Path(__file__).parents[1] / "resources"
PAPER_TABLE1 = RESOURCES / "paper_table1.toml"
PAPERS = RESOURCES / "papers"

# metric keys of iapas's evaluation records -> the column titles the papers print
METRIC_TITLES = {"pixel_ap": "AP", "pixel_f1_max": "F1-max", "pixel_auroc": "pixel AUROC", "pixel_aupro": "AUPRO",
                 "image_auroc": "image AUROC", "image_ap": "image AP", "image_f1_max": "image F1-max"}

PaperNumbers = dict[tuple[str, str], dict[str, float]]  # (row label, dataset) -> metric -> value in %


@dataclass(frozen=True)
class Row:
    """One row of a table: the paper's label, and how iapas runs it (no `method`: the paper's numbers only)."""

    label: str
    method: str = ""  # an iapas method name; "" when iapas cannot run it
    recipe: str = "iapas"  # the config recipe (IAP-AS: "official", the authors' released code)
    ablate: tuple[str, ...] = ()
    note: str = ""  # why iapas cannot run it, or what it needs first
    trained_by: str = ""  # the `iapas train` command that makes its checkpoint, when none is released

    @property
    def key(self) -> str:
        """The row's folder name under the output directory."""
        return self.method + (f"-{self.recipe}" if self.recipe != "iapas" else "") + ("-no-" + "-".join(self.ablate) if self.ablate else "")


@dataclass(frozen=True)
class TableSpec:
    """A paper's table: rows x datasets, measured under `protocol`, compared on `metrics`."""

    name: str
    title: str
    rows: tuple[Row, ...]
    datasets: tuple[str, ...]
    metrics: tuple[str, ...]
    protocol: str
    paper: Callable[[], PaperNumbers] = field(compare=False)
    note: str = ""


TABLES: Registry[TableSpec] = Registry("reproducible table")


def table1_numbers() -> PaperNumbers:
    """IAP-AS Table 1 from iapas/resources/paper_table1.toml: (method, dataset) -> AP and F1-max."""
    data = tomllib.loads(PAPER_TABLE1.read_text(encoding="utf-8"))
    numbers: PaperNumbers = {}
    for dataset, entry in data.items():
        if isinstance(entry, dict) and "ap" in entry:
            for method, ap, f1 in zip(data["methods"], entry["ap"], entry["f1_max"]):
                numbers[(method, dataset)] = {"pixel_ap": ap, "pixel_f1_max": f1}
    return numbers


def table3_numbers() -> PaperNumbers:
    """IAP-AS Table 3 (MVTec AD ablation) from the same file: (row label, "mvtec") -> AP and F1-max."""
    data = tomllib.loads(PAPER_TABLE1.read_text(encoding="utf-8"))
    return {(ablation_label(ablated_steps(row)), "mvtec"): {"pixel_ap": row["ap"], "pixel_f1_max": row["f1_max"]}
            for row in data["ablation"]}


def ablated_steps(row: dict) -> tuple[str, ...]:
    """The IAP-AS steps a Table 3 row switches off (its false flags)."""
    from ..methods.iapas import IAPAS_ABLATIONS

    return tuple(step for step in IAPAS_ABLATIONS if not row[step])


def ablation_label(ablate: tuple[str, ...]) -> str:
    return "IAP-AS" + (" without " + ", ".join(ablate) if ablate else "")


def paper_file_numbers(name: str) -> Callable[[], PaperNumbers]:
    """Reader of iapas/resources/papers/<name>.toml: [[row]] entries with method, dataset and metric values."""

    def read() -> PaperNumbers:
        data = tomllib.loads((PAPERS / f"{name}.toml").read_text(encoding="utf-8"))
        return {(row["method"], row["dataset"]): {k: float(v) for k, v in row.items() if k in METRIC_TITLES}
                for row in data.get("row", [])}

    return read


NOT_IN_IAPAS = "not implemented in iapas: the paper's numbers only"
IAPAS_OFFICIAL = Row("IAP-AS", "iapas", recipe="official")
TABLE1_DATASETS = ("mvtec", "mpdd", "btad", "ksdd1", "mtd", "dtd", "dagm")

TABLES.register("table1")(TableSpec(
    name="table1",
    title="IAP-AS paper, Table 1: pixel AP and F1-max (%) on seven industrial datasets",
    rows=(Row("CLIPseg", "clipseg"), Row("WinCLIP", "winclip"),
          Row("SDP", note=f"SDP: {NOT_IN_IAPAS}"), Row("SAA+", "saa"),
          Row("EVF-SAM", note=f"EVF-SAM: {NOT_IN_IAPAS}"), IAPAS_OFFICIAL),
    datasets=TABLE1_DATASETS,
    metrics=("pixel_ap", "pixel_f1_max"),
    protocol="paper",
    paper=table1_numbers,
    note="IAP-AS runs the official recipe (github sybeam27/IAP-ZSAS's rules; `iapas config show --recipe official`).",
))


def _table3_rows() -> tuple[Row, ...]:
    data = tomllib.loads(PAPER_TABLE1.read_text(encoding="utf-8"))
    rows = []
    for entry in data["ablation"]:
        ablate = ablated_steps(entry)
        rows.append(Row(ablation_label(ablate), "iapas", recipe="official", ablate=ablate))
    return tuple(rows)


TABLES.register("table3")(TableSpec(
    name="table3",
    title="IAP-AS paper, Table 3: ablation of steps 1-1 (tagging), 1-3 (LLM) and 2-2 (filter) on MVTec AD",
    rows=_table3_rows(),
    datasets=("mvtec",),
    metrics=("pixel_ap", "pixel_f1_max"),
    protocol="paper",
    paper=table3_numbers,
    note="Each row is `iapas eval --method iapas --recipe official --ablate ...`.",
))
