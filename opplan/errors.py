"""The error types users see.

Anything raised as an :class:`OpplanError` is a problem with the user's input or
environment, not a bug: the CLI prints its message (no traceback) and exits with
status 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class OpplanError(Exception):
    """A user-facing error: bad input, a missing file, a refused operation."""


class ParamsError(OpplanError):
    """``params.yaml`` (or a preset) is invalid; the message names file, line and key."""


class DataError(OpplanError):
    """A dataset, manifest, annotation file or shard is unusable."""


class AnnotationError(DataError):
    """A malformed annotation line; the message names the file and line."""

    def __init__(self, path: object, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        super().__init__(f"{path}:{line}: {message}")
