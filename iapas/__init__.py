"""iapas: training-free zero-shot industrial anomaly segmentation (IAP-AS).

The public names below load on first use (module `__getattr__`), so `import iapas` and the `iapas`
command start without importing torch; `from iapas import Pipeline` works as before.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Boxes": ".types", "Masks": ".types", "Result": ".types",
    "Config": ".config", "load_config": ".config",
    "ConfigError": ".errors", "DatasetError": ".errors", "IapasError": ".errors", "InputImageError": ".errors",
    "WeightsError": ".errors",
    "Stage": ".stages.graph", "StageGraph": ".stages.graph",
    "Pipeline": ".methods.iapas.pipeline",
}
__all__ = [*sorted(_LAZY), "__version__"]

if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from .config import Config, load_config
    from .errors import ConfigError, DatasetError, IapasError, InputImageError, WeightsError
    from .methods.iapas.pipeline import Pipeline
    from .stages.graph import Stage, StageGraph
    from .types import Boxes, Masks, Result


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is read."""
    if name not in _LAZY:
        raise AttributeError(f"module 'iapas' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
