"""iapas's prompt checkpoints written in the authors' layout, so their own test.py can load them.

`iapas weights to-official` (and `iapas train --save-format official`) give AnomalyCLIP and FAPrompt files
whose "prompt_learner" holds every tensor the authors' prompt learner has (their test.py loads it
strictly); the learned values are unchanged and iapas's record stays beside them, so iapas reads the
result as before. The methods that have such a layout are a registry.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError
from ..registry import Registry

OFFICIAL_LAYOUTS: Registry = Registry("method with an official checkpoint layout")
OFFICIAL_LAYOUTS.register_lazy("anomalyclip", "iapas.methods.anomalyclip.model:AnomalyClip")
OFFICIAL_LAYOUTS.register_lazy("faprompt", "iapas.methods.faprompt.model:FAPrompt")


def checkpoint_record(path: Path) -> dict:
    """iapas's record of a prompt checkpoint (method, settings, CLIP, training), or a one-line WeightsError."""
    import torch

    if not Path(path).is_file():
        raise WeightsError(f"prompt checkpoint not found: {path}")
    try:
        record = dict(torch.load(path, map_location="cpu", weights_only=True)["iapas"])
        record["method"] = str(record["method"])
    except Exception:
        raise WeightsError(f"{path} is not an iapas prompt checkpoint (no 'iapas' record: a released file is "
                           "already in its authors' layout)") from None
    return record


def to_official(checkpoint: Path, clip: Path, output: Path, device: str = "cpu") -> Path:
    """Write `checkpoint` (an iapas AnomalyCLIP or FAPrompt file) in its authors' layout at `output`.

    The frozen word embeddings the authors' prompt learner also stores come from `clip`, the CLIP the
    prompts were trained on.
    """
    from ..backends.clip import ClipBackbone

    record = checkpoint_record(checkpoint)
    method = record["method"]
    if method not in OFFICIAL_LAYOUTS.names():
        raise WeightsError(f"{checkpoint} holds {method} prompts; an official layout exists for "
                           f"{', '.join(OFFICIAL_LAYOUTS.names())}")
    model = OFFICIAL_LAYOUTS.get(method).load(checkpoint, ClipBackbone(clip, device))
    extra = {key: value for key, value in record.items() if key not in ("method", "settings", "clip")}  # trained_on, epochs
    return model.save(output, extra, layout="official")
