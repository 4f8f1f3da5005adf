"""The one exception type checkpoint loaders raise for bad files: one line, naming the file."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match its config (one line for the user)."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """A file the checkpoint needs is missing."""
