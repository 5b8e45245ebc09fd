"""Errors shared across layers: unreadable checkpoints, benchmark datasets not on disk."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unsupported, or its keys/shapes do not match the model."""


class DatasetMissing(FileNotFoundError, ValueError):
    """A benchmark dataset is not on disk in its expected layout (the message says which layout
    and where to get it). A FileNotFoundError and a ValueError, so either kind of handler sees it."""
