"""Recognize Anything (RAM, RAM++) for image tagging, written for iapas: Swin image encoder, tagging head,
model, and the loader of the released checkpoints with RAM's English tag list and per-tag thresholds.

See Also: `iapas/backends/taggers.py` (the "ram" tagger backend) and docs/methods/ram.md.
"""
from .loader import class_thresholds, load_ram_model, tag_list
from .model import RamModel, RamShape

__all__ = ["RamModel", "RamShape", "class_thresholds", "load_ram_model", "tag_list"]
