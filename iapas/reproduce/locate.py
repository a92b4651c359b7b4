"""Where a table's inputs are: dataset folders under one root, weights in the weights dir; every missing one listed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..config import Config
from ..errors import IapasError

# The folder names each dataset is usually unpacked under (its archive's name first), matched case-insensitively
USUAL_FOLDERS = {
    "mvtec": ("mvtec_anomaly_detection", "mvtec", "mvtec_ad", "mvtec-ad", "mvtecad"),
    "visa": ("visa", "visa_pytorch", "VisA_20220922"),
    "mpdd": ("mpdd",),
    "btad": ("btad", "BTech_Dataset_transformed", "btech"),
    "ksdd1": ("KolektorSDD", "ksdd1", "ksdd", "kolektor"),
    "ksdd2": ("KolektorSDD2", "ksdd2"),
    "mtd": ("Magnetic-Tile-Defect", "mtd", "magnetic_tile", "Magnetic-tile-defect-datasets."),
    "dtd": ("DTD-Synthetic", "dtd", "dtd_synthetic"),
    "dagm": ("DAGM2007", "dagm", "DAGM_KaggleUpload", "dagm2007"),
}

# where to get each dataset (its authors' page)
DATASET_PAGES = {
    "mvtec": "https://www.mvtec.com/company/research/datasets/mvtec-ad",
    "visa": "https://github.com/amazon-science/spot-diff (VisA; prepared with its 1cls split)",
    "mpdd": "https://github.com/stepanje/MPDD",
    "btad": "https://github.com/pankajmishra000/VT-ADL (BTAD)",
    "ksdd1": "https://www.vicos.si/resources/kolektorsdd/",
    "ksdd2": "https://www.vicos.si/resources/kolektorsdd2/",
    "mtd": "https://github.com/abin24/Magnetic-tile-defect-datasets.",
    "dtd": "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1 (DTD-Synthetic, from the MUAD authors)",
    "dagm": "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection (DAGM 2007)",
}

# What each method loads from the weights dir: (manifest role, family or "", the config key that names a path instead,
# the manifest entry to suggest when none is there: the one its paper used)
METHOD_WEIGHTS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "clipseg": (("clipseg", "", "", "clipseg-rd64-refined"),),
    "winclip": (("clip", "", "clip_methods.weights", "clip-vit-b-16-plus-240"),),
    "iapas": (("detector", "", "detection.weights", "grounding-dino-tiny"), ("segmenter", "", "masking.weights", "sam-vit-h")),
    "saa": (("detector", "grounding-dino", "detection.weights", "groundingdino-swint-ogc"),
            ("segmenter", "sam", "masking.weights", "sam-vit-h"), ("saa-saliency", "", "", "wide-resnet50-2-racm")),
    "adaclip": (("clip", "", "clip_methods.weights", "clip-vit-l-14-336"),),
    "anomalyclip": (("clip", "", "clip_methods.weights", "clip-vit-l-14-336"),),
    "faprompt": (("clip", "", "clip_methods.weights", "clip-vit-l-14-336"),),
    "genclip": (("clip", "", "clip_methods.weights", "clip-vit-l-14-336"),),
}


@dataclass(frozen=True)
class Missing:
    """One input a table cannot run without, and where to get it."""

    what: str
    where: str

    def line(self) -> str:
        return f"{self.what}: {self.where}"


class MissingInputs(IapasError):
    """Every missing dataset and weights file of a table, one line each."""

    def __init__(self, missing: Sequence[Missing]) -> None:
        self.missing = tuple(missing)
        lines = "\n".join(f"  - {item.line()}" for item in self.missing)
        super().__init__(f"{len(self.missing)} input(s) missing; nothing was run:\n{lines}")


def find_dataset(root: Path, name: str) -> Path | None:
    """The folder of dataset `name` directly under `root`, by its usual names (any case), else None."""
    root = Path(root)
    if not root.is_dir():
        return None
    wanted = {folder.lower() for folder in USUAL_FOLDERS.get(name, (name,))}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    return None


def dataset_roots(datasets: Sequence[str], root: Path | None, given: Mapping[str, Path]) -> tuple[dict[str, Path], list[Missing]]:
    """Each dataset's folder (given one by one, else found under `root`) and the missing ones, checked by their loaders."""
    from ..data.datasets import load_dataset

    found: dict[str, Path] = {}
    missing: list[Missing] = []
    for name in datasets:
        path = Path(given[name]) if name in given else (find_dataset(root, name) if root is not None else None)
        get = DATASET_PAGES.get(name, "its authors' page")
        if path is None:
            looked = f"no {'/'.join(USUAL_FOLDERS.get(name, (name,)))} folder under {root}" if root is not None else "no --data ROOT"
            missing.append(Missing(f"dataset {name}", f"{looked}; get it from {get}, or pass --dataset-root {name}=DIR"))
            continue
        try:
            dataset = load_dataset(name, path)
            for category in dataset.categories:
                dataset.check(category)
        except IapasError as error:
            missing.append(Missing(f"dataset {name} at {path}", f"{error} (get it from {get})"))
            continue
        found[name] = path
    return found, missing


def download_hint(name: str) -> str:
    """`iapas weights download NAME` when the manifest entry has a download source, else where the manifest says it comes from."""
    from ..weights.download import load_sources
    from ..weights.manifest import load_manifest

    if name in {source.entry for source in load_sources()}:
        return f"`iapas weights download {name}`"
    entry = next((entry for entry in load_manifest() if entry.name == name), None)
    return f"put it at {entry.expected_path} in the weights dir (source: {entry.source})" if entry else "see `iapas weights list`"


def method_weights(method: str, config: Config, label: str) -> list[Missing]:
    """The weights `method` would load that are absent (a path named in the config, else the manifest's roles)."""
    from ..config import _setting
    from ..errors import WeightsError
    from ..weights.manifest import find_weights

    missing = []
    for role, family, key, suggested in METHOD_WEIGHTS.get(method, ()):
        chosen = _setting(config, key) if key else ""
        if chosen:
            if not Path(chosen).exists():
                missing.append(Missing(f"{label}: {role} weights {chosen}", f"the path given by {key} does not exist"))
            continue
        try:
            find_weights(role, config.weights_dir, family)
        except WeightsError:
            what = f"{label}: no {family + ' ' if family else ''}{role} weights in {config.weights_dir}/"
            official = config.recipe == "official"  # the authors' own files, which the official download profile fetches
            hint = "`iapas weights download --profile official` (the authors' models)" if official else download_hint(suggested)
            missing.append(Missing(what, hint))
    return missing
