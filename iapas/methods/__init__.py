"""Every segmentation method, one folder each (`iapas/methods/<name>/`), registered here by one line.

A method folder holds the method's model, its inference and, where it learns, its training; its
`__init__.py` exposes `build(config, ablate) -> Method`. Shared machinery lives beside the methods:
the stage graph (`iapas/stages/graph.py`, `iapas/stages/`), model loaders (`iapas/backends/`) and the CLIP
prompt-learning pieces (`iapas/prompt_learning/`).
"""
from .base import METHODS, Method, MethodBuilder

METHODS.register_lazy("iapas", "iapas.methods.iapas:build")
METHODS.register_lazy("winclip", "iapas.methods.winclip:build")
METHODS.register_lazy("adaclip", "iapas.methods.adaclip:build")
METHODS.register_lazy("anomalyclip", "iapas.methods.anomalyclip:build")
METHODS.register_lazy("faprompt", "iapas.methods.faprompt:build")
METHODS.register_lazy("genclip", "iapas.methods.genclip:build")
METHODS.register_lazy("clipseg", "iapas.methods.clipseg:build")
METHODS.register_lazy("saa", "iapas.methods.saa:build")
METHODS.register_lazy("musc", "iapas.methods.musc:build")
METHODS.register_lazy("anomalydino", "iapas.methods.anomalydino:build")

__all__ = ["METHODS", "Method", "MethodBuilder"]
