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
