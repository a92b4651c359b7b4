"""One exception family: the CLI catches `IapasError` once and prints it as one line.

Every mistake a user can make (a bad option, file, folder, model or answer) is one of these
classes, so the CLI never reports it as an "internal error"; docs/input-behaviour.md
lists which input raises which.
"""


class IapasError(Exception):
    """Base of every error iapas raises on purpose."""


class InputImageError(IapasError):
    """An image is missing, unreadable or unusable."""


class WeightsError(IapasError):
    """A model checkpoint is missing, corrupt or of the wrong kind."""


class CorruptWeightsError(WeightsError):
    """A checkpoint file exists but cannot be read (truncated or damaged safetensors / .pth)."""


class ConfigError(IapasError):
    """A configuration file or option is invalid."""


class ValueRangeError(ConfigError):
    """A number outside its allowed range, or NaN (thresholds outside [0, 1], counts below 1)."""


class CalibrationFileError(ConfigError):
    """A calibration file is unreadable or holds a field of the wrong type or range."""


class DatasetError(IapasError):
    """A dataset root or layout is invalid."""


class LLMError(IapasError):
    """An LLM backend could not answer: endpoint unreachable, timed out or malformed reply."""


class MetricsInputError(IapasError):
    """A score map the metrics cannot bin honestly (NaN, or values outside the histogram's range)."""


class OutputError(IapasError):
    """An output folder or file cannot be written (a file where a folder belongs, read-only, disk full)."""


class ImageProcessingError(IapasError):
    """An unexpected failure while segmenting one image, named by that image (a batch goes on without it)."""


class FingerprintMismatch(IapasError):
    """A folder holds results made with other settings than this run's, and reusing them would be wrong."""


class DecisionError(ConfigError):
    """A threshold, thresholds file, region-of-interest mask or decision setting that cannot be used as given."""
