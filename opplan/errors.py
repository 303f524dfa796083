"""The error types users see.

Anything raised as an :class:`OpplanError` is a problem with the user's input or
environment, not a bug: the CLI prints its message (no traceback) and exits with
status 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


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


ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some space there and run the command again; finished work is kept",
    errno.EDQUOT: "free some space (or raise the quota) and run the command again; finished work is kept",
    errno.EROFS: "the file system is read-only: run from a writable folder (or remount it read-write)",
    errno.EACCES: "permission denied: make the folder writable for this user, or run from another folder",
    errno.EPERM: "operation not permitted: make the folder writable for this user, or run from another folder",
}
"""Operating-system errors that are the environment's fault, not a bug: what to do about each."""


def user_message(exc: BaseException) -> str | None:
    """The one-paragraph message for an error the user can act on, or None for a bug (keep
    its traceback): an :class:`OpplanError`, or an environment ``OSError`` (disk full, a
    read-only folder, ...) anywhere in the exception's chain, named by its path."""
    if isinstance(exc, OpplanError):
        return str(exc)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in ENVIRONMENT_ERRORS:
            where = cause.filename if cause.filename is not None else f"a file under {os.getcwd()}"
            return f"{where}: {cause.strerror or os.strerror(cause.errno)}; {ENVIRONMENT_ERRORS[cause.errno]}"
        cause = cause.__cause__ or cause.__context__
    return None
