"""AnomalyDINO's per-category preprocessing: which categories mask their background, which references are rotated.

src/utils.py `get_dataset_info(dataset, preprocess)` holds the authors' tables; `settings` answers them for a
(dataset, category) pair, and says what iapas chose for a category outside them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError

MODES = ("informed", "agnostic", "masking_only", "informed_no_mask", "agnostic_no_mask", "force_no_mask_no_rotation",
         "force_mask_no_rotation", "force_no_mask_rotation", "force_mask_rotation")
# src/utils.py: MVTec AD categories whose background is masked ("masking test", paper Fig. 2)
MVTEC_MASKED = frozenset({"capsule", "hazelnut", "pill", "screw", "toothbrush"})
# src/utils.py, "informed": the MVTec AD categories whose training images are not all oriented alike
MVTEC_INFORMED_ROTATION = frozenset({"hazelnut", "screw"})
MVTEC = frozenset("bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush transistor wood zipper".split())
VISA = frozenset("candle capsules cashew chewinggum fryum macaroni1 macaroni2 pcb1 pcb2 pcb3 pcb4 pipe_fryum".split())
ROTATION_ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)  # src/utils.py augment_image


@dataclass(frozen=True)
class Preprocessing:
    """Whether a category's test images are background-masked and its references rotated."""

    masking: bool
    rotation: bool


def settings(mode: str, dataset: str, category: str) -> Preprocessing:
    """The authors' masking and rotation for this category under `mode` (src/utils.py get_dataset_info).

    Chosen where the source is silent (a category outside MVTec AD and VisA, e.g. `iapas segment`): no masking
    (masking was enabled only where the authors' masking test passed), and rotation as the mode gives it to
    every category (agnostic: on; informed, masking_only: off).
    """
    if mode not in MODES:
        raise ConfigError(f"anomalydino.preprocess must be one of {', '.join(MODES)}, got {mode!r}")
    if mode.startswith("force_"):
        return Preprocessing(masking=mode.startswith("force_mask"), rotation=mode.endswith("_rotation") and "no_rotation" not in mode)
    category = category.lower()
    dataset = dataset.lower().replace("_ad", "").replace("-ad", "")
    known_visa = dataset == "visa" or (dataset != "mvtec" and category in VISA)
    if known_visa:
        masking = mode not in ("informed_no_mask", "agnostic_no_mask")  # VisA: every category masked
        return Preprocessing(masking, rotation=mode in ("agnostic", "agnostic_no_mask"))
    masking = mode in ("agnostic", "informed", "masking_only") and category in MVTEC_MASKED
    if mode in ("agnostic", "agnostic_no_mask"):
        rotation = True
    elif mode in ("informed", "informed_no_mask"):
        rotation = category in MVTEC_INFORMED_ROTATION
    else:
        rotation = False
    return Preprocessing(masking, rotation)
