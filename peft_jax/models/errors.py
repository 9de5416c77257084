"""Errors raised by the models package: checkpoints that do not fit, batches a model cannot read."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, corrupt, or does not fit the model."""


class DecodeError(ValueError):
    """A decoding argument or batch is invalid."""
