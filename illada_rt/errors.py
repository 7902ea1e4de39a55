"""Exceptions raised for bad input. All derive from ValueError so callers can catch broadly."""


class IlladaError(ValueError):
    """Base class for illada-rt input errors."""


class ConfigError(IlladaError):
    """config.json is missing, unparsable, or describes an impossible model."""


class CheckpointError(IlladaError):
    """Weight files are missing, malformed, truncated, mis-shaped or in a refused format."""


class DecodingError(RuntimeError):
    """Decoding cannot go on (e.g. a block made no progress: the model's logits are all NaN)."""
