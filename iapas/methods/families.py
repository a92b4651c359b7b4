"""Which family each method belongs to, and the settings a family reads (names only: nothing heavy imports here).

The CLI refuses an option of one family given to a method of another (iapas/cli/method_options.py), and
a run's fingerprint records the precision of the setting its method reads.
"""
from __future__ import annotations

IAPAS, CLIP, LEARNED_CLIP = "IAP-AS", "CLIP", "learned CLIP"
MUSC, ANOMALYDINO = "MuSc", "AnomalyDINO"  # zero-shot from the test set's own patches; few-shot DINOv2 patch matching
CLIPSEG, SAA = "CLIPSeg", "SAA+"  # text-prompted segmentation with fixed prompts; Grounding DINO + SAM with hybrid prompts
# method -> family; a new method is one line here beside its line in iapas/methods/__init__.py
METHOD_FAMILIES: dict[str, str] = {
    "iapas": IAPAS,
    "winclip": CLIP,
    "adaclip": LEARNED_CLIP,
    "anomalyclip": LEARNED_CLIP,
    "faprompt": LEARNED_CLIP,
    "genclip": LEARNED_CLIP,
    "hepe": LEARNED_CLIP,  # AdaCLIP's prompts with MLLM text and DINOv2 attention prompts
    "musc": MUSC,
    "anomalydino": ANOMALYDINO,
    "clipseg": CLIPSEG,
    "saa": SAA,
}
# family -> the config key of the precision its models run at: IAP-AS runs `auto` under its default recipe,
# the CLIP methods fp32 unless asked (`--precision` sets both)
PRECISION_SETTINGS = {IAPAS: "precision", CLIP: "clip_methods.precision", LEARNED_CLIP: "clip_methods.precision",
                      MUSC: "clip_methods.precision", ANOMALYDINO: "clip_methods.precision",
                      CLIPSEG: "clip_methods.precision", SAA: "clip_methods.precision"}


def family(method: str) -> str:
    """The method's family (a method outside the table is a family of its own)."""
    return METHOD_FAMILIES.get(method, method)


def methods_of(*families: str) -> frozenset[str]:
    """The methods of the given families."""
    return frozenset(method for method, name in METHOD_FAMILIES.items() if name in families)


def precision_setting(method: str) -> str:
    """The dotted config key of the precision `method` runs at (the top-level `precision` outside the table)."""
    return PRECISION_SETTINGS.get(family(method), "precision")
