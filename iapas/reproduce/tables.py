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
    # per tested dataset ("*": every other one), the checkpoint the row loads: "manifest:<entry>" (a released one)
    # or "train:<auxiliary dataset>" (ours, from `iapas train <method>` on that dataset)
    checkpoints: tuple[tuple[str, str], ...] = ()
    released: tuple[tuple[str, str], ...] = ()  # auxiliary dataset -> a released file that may stand in for ours

    def checkpoint_for(self, dataset: str) -> str:
        """The checkpoint rule for one tested dataset ("" when the row loads none)."""
        rules = dict(self.checkpoints)
        return rules.get(dataset, rules.get("*", ""))

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


# The CLIP papers' zero-shot protocol: trained on MVTec AD, tested on the others; MVTec AD tested with VisA training
# (AnomalyCLIP, FAPrompt, GenCLIP and AdaCLIP's papers). AdaCLIP's released checkpoints follow it (its test.sh).
CROSS_TRAINED = (("mvtec", "train:visa"), ("*", "train:mvtec"))
ADACLIP_RELEASED = (("mvtec", "manifest:adaclip-pretrained-visa-clinicdb"), ("*", "manifest:adaclip-pretrained-mvtec-colondb"))
CLIP_PROTOCOL_NOTE = ("Measured under the `anomalyclip-test` protocol (zqhang/AnomalyCLIP test.py's, which FAPrompt's and "
                      "AdaCLIP's share: maps and masks at 518 px), with the CLIP methods' `official` recipe (their authors' "
                      "code's rules; `iapas config show --recipe official`).")
CLIP_PROTOCOL = "anomalyclip-test"
OFFICIAL = "official"

# AnomalyCLIP's own files (github zqhang/AnomalyCLIP test.sh): 9_12_4_multiscale for MVTec AD, 9_12_4_multiscale_visa for the rest
ANOMALYCLIP_RELEASED = (("visa", "github zqhang/AnomalyCLIP checkpoints/9_12_4_multiscale/epoch_15.pth"),
                        ("mvtec", "github zqhang/AnomalyCLIP checkpoints/9_12_4_multiscale_visa/epoch_15.pth"))
HEPE_TRAIN = "`iapas train hepe --dataset mvtec --root MVTEC -o weights/hepe-mvtec` (and --dataset visa for MVTec AD)"

TABLES.register("hepe-table1")(TableSpec(
    name="hepe-table1",
    title="HEPE paper, Table 1: image- and pixel-level AUROC and max-F1 (%) on seven industrial datasets",
    rows=(Row("SAA", "saa"), Row("WinCLIP", "winclip", recipe=OFFICIAL), Row("DINOv2", note=f"DINOv2 (fine-tuned): {NOT_IN_IAPAS}"),
          Row("SAM", note=f"SAM (fine-tuned): {NOT_IN_IAPAS}"), Row("APRIL-GAN", note=f"APRIL-GAN: {NOT_IN_IAPAS}"),
          Row("AdaCLIP", "adaclip", recipe=OFFICIAL, checkpoints=ADACLIP_RELEASED),
          Row("HEPE", "hepe", trained_by=HEPE_TRAIN, checkpoints=CROSS_TRAINED)),
    datasets=("mvtec", "visa", "mpdd", "btad", "ksdd1", "dagm", "dtd"),
    metrics=("image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max"),
    protocol=CLIP_PROTOCOL,
    paper=paper_file_numbers("hepe_table1"),
    note="HEPE has no released code or checkpoint. " + CLIP_PROTOCOL_NOTE,
))

TABLES.register("genclip-table1")(TableSpec(
    name="genclip-table1",
    title="GenCLIP paper, Table 1: pixel AUROC and PRO, image AUROC and AP (%) on six industrial datasets",
    rows=(Row("CLIP", note=f"CLIP: {NOT_IN_IAPAS}"), Row("CoOp", note=f"CoOp: {NOT_IN_IAPAS}"), Row("WinCLIP", "winclip", recipe=OFFICIAL),
          Row("AnomalyCLIP", "anomalyclip", recipe=OFFICIAL, trained_by="iapas train anomalyclip", checkpoints=CROSS_TRAINED,
              released=ANOMALYCLIP_RELEASED),
          Row("AdaCLIP", "adaclip", recipe=OFFICIAL, checkpoints=ADACLIP_RELEASED),
          Row("GenCLIP", "genclip", recipe=OFFICIAL, trained_by="iapas train genclip", checkpoints=CROSS_TRAINED)),
    datasets=("mvtec", "visa", "mpdd", "btad", "ksdd1", "dtd"),
    metrics=("pixel_auroc", "pixel_aupro", "image_auroc", "image_ap"),
    protocol=CLIP_PROTOCOL,
    paper=paper_file_numbers("genclip_table1"),
    note="GenCLIP has no released checkpoint: train it first. " + CLIP_PROTOCOL_NOTE,
))

TABLES.register("faprompt-table2")(TableSpec(
    name="faprompt-table2",
    title="FAPrompt paper, Table 2: pixel-level AUROC and PRO (%) on the industrial datasets iapas loads",
    rows=(Row("CLIP", note=f"CLIP: {NOT_IN_IAPAS}"), Row("CLIP-AC", note=f"CLIP-AC: {NOT_IN_IAPAS}"), Row("WinCLIP", "winclip", recipe=OFFICIAL),
          Row("APRIL-GAN", note=f"APRIL-GAN: {NOT_IN_IAPAS}"), Row("AnoVL", note=f"AnoVL: {NOT_IN_IAPAS}"),
          Row("CoOp", note=f"CoOp: {NOT_IN_IAPAS}"), Row("CoCoOp", note=f"CoCoOp: {NOT_IN_IAPAS}"),
          Row("AnomalyCLIP", "anomalyclip", recipe=OFFICIAL, trained_by="iapas train anomalyclip", checkpoints=CROSS_TRAINED,
              released=ANOMALYCLIP_RELEASED),
          Row("FAPrompt", "faprompt", recipe=OFFICIAL, trained_by="iapas train faprompt", checkpoints=CROSS_TRAINED)),
    datasets=("mvtec", "visa", "ksdd1", "btad", "mpdd", "dagm", "dtd"),
    metrics=("pixel_auroc", "pixel_aupro"),
    protocol=CLIP_PROTOCOL,
    paper=paper_file_numbers("faprompt_table2"),
    note=CLIP_PROTOCOL_NOTE,
))
