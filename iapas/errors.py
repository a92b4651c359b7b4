"""One exception family: the CLI catches `IapasError` once and prints it as one line."""


class IapasError(Exception):
    """Base of every error iapas raises on purpose."""


class InputImageError(IapasError):
    """An image is missing, unreadable or unusable."""


class WeightsError(IapasError):
    """A model checkpoint is missing, corrupt or of the wrong kind."""


class ConfigError(IapasError):
    """A configuration file or option is invalid."""


class DatasetError(IapasError):
    """A dataset root or layout is invalid."""


class OutputError(IapasError):
    """An output folder or file cannot be written (a file where a folder belongs, read-only, disk full)."""


class ImageProcessingError(IapasError):
    """An unexpected failure while segmenting one image, named by that image (a batch goes on without it)."""


class FingerprintMismatch(IapasError):
    """A folder holds results made with other settings than this run's, and reusing them would be wrong."""
