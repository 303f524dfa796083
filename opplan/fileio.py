"""Atomic file writes: a crash never leaves a truncated file that a later run trusts.

Every file opplan writes goes through here: written to a temporary file in the
same directory, flushed and fsynced, then renamed over the target (rename is
atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from opplan.errors import ENVIRONMENT_ERRORS, OpplanError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_sibling(path)
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRORS:  # a full or read-only disk: the CLI's message says what to do
            raise
        # e.g. a folder where nothing can be made (/proc), a parent that is a file: one line, not a traceback
        raise OpplanError(f"cannot write {path}: {exc.strerror or exc}; choose a path in a writable folder") from None
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: name the one being written
        raise


def _create_sibling(path: Path) -> tuple[int, Path]:
    """A new, empty hidden sibling of ``path``, opened for writing. Mode 0666 less the umask,
    applied by the kernel as for any new file (the process umask is never read or changed)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (the format is taken from ``path``'s suffix)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    supported = fig.canvas.get_supported_filetypes()
    if str(kwargs["format"]).lower() not in supported:
        raise OpplanError(f"{path}: matplotlib cannot write .{kwargs['format']} files; "
                          f"use one of {', '.join('.' + k for k in sorted(supported))}")
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, **kwargs)
