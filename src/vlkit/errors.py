"""The error raised for any checkpoint that cannot be read or does not fit the model."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unsupported, or its keys/shapes do not match the model."""
