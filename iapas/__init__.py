"""iapas: training-free zero-shot industrial anomaly segmentation (IAP-AS)."""
from .config import Config, load_config
from .errors import ConfigError, DatasetError, IapasError, InputImageError, WeightsError
from .stages.graph import Stage, StageGraph
from .methods.iapas.pipeline import Pipeline
from .types import Boxes, Masks, Result

__version__ = "0.1.0"
__all__ = [
    "Boxes", "Config", "ConfigError", "DatasetError", "IapasError", "InputImageError", "Masks", "Pipeline",
    "Result", "Stage", "StageGraph", "WeightsError", "load_config", "__version__",
]
