"""Errors shared by every component (kept here so that no component imports another to raise them)."""

from __future__ import annotations


class BadSampleError(ValueError):
    """A sample that cannot be used; the message names the sample id and the file/field at fault."""

    def __init__(self, sample_id: str, message: str):
        self.sample_id = sample_id
        super().__init__(f"sample {sample_id!r}: {message}")


class CheckpointError(Exception):
    """A checkpoint that cannot be written, verified or read back; the message names the checkpoint folder and, where
    one is at fault, the file."""
