"""The normalised dataset folder every importer writes and ``prepare`` reads.

A dataset folder holds ``manifest.csv`` (header ``path,label,split``; ``path``
relative to the folder, a video file or a frame folder (:mod:`opplan.data.frames`);
``label`` a class name, ``split`` ``train`` or ``test``) and ``classes.txt`` (one class
name a line; line order = class index). Rows that cannot
be used are returned as :class:`Problem` values (file, line, reason), never raised:
one bad line must not cost a whole dataset.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opplan.errors import DataError
from opplan.fileio import atomic_write_text

MANIFEST = "manifest.csv"
CLASSES = "classes.txt"
MANIFEST_COLUMNS = ("path", "label", "split")
SPLITS = ("train", "test")
HINT = "make one with `opplan data synth data` (the demo) or `opplan data import ...` (a real dataset)"


@dataclass(frozen=True)
class Entry:
    """One usable video of a dataset: ``path`` relative to the dataset folder."""

    path: str
    label: str
    split: str
    line: int = 0
    """Line of the row in its source file (1 = header), for messages."""


@dataclass(frozen=True)
class Problem:
    """A row that was left out, with where it came from and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file with a header, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_dataset(folder: str | Path, entries: Iterable[Entry], classes: list[str]) -> None:
    """Write ``manifest.csv`` and ``classes.txt`` into ``folder`` (atomically)."""
    folder = Path(folder)
    atomic_write_text(folder / CLASSES, "".join(f"{name}\n" for name in classes))
    write_csv(folder / MANIFEST, MANIFEST_COLUMNS, ((e.path, e.label, e.split) for e in entries))


def write_problems(path: str | Path, problems: Iterable[Problem]) -> None:
    """A ``file,line,reason`` report (undecodable bytes of file names written as escapes)."""
    write_csv(path, ("file", "line", "reason"), ((_text(p.file), p.line, _text(p.reason)) for p in problems))


def _text(name: str) -> str:
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def decode_text(raw: bytes) -> str:
    """UTF-8 (a leading byte-order mark, as spreadsheets write, is dropped); ValueError names the line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the file as UTF-8") from None


def is_file(path: Path) -> bool:
    """``path.is_file()``, False (not an exception) for a name too long or otherwise unusable."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def is_video(path: Path) -> bool:
    """A video file, or a folder (a frame folder, :mod:`opplan.data.frames`); False, not an
    exception, for a name too long or otherwise unusable."""
    try:
        return path.is_file() or path.is_dir()
    except (OSError, ValueError):
        return False


def is_utf8(text: str) -> bool:
    """False for a name read from disk with undecodable bytes (Python keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class name of ``classes.txt`` (one name a line), or None."""
    if not label.strip():
        return "empty label"
    if not is_utf8(label):
        return f"label {label!r} is not UTF-8 text (a file or folder name with a non-UTF-8 byte?); rename it"
    if label != label.strip() or len(label.splitlines()) != 1:
        return f"label {label!r} has a line break or surrounding blanks"
    return None


def _read(path: Path, what: str) -> str:
    try:
        return decode_text(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{path}: no {what}; {HINT}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None


def read_classes(path: str | Path) -> list[str]:
    """Class names, one a line; blank lines are ignored, duplicates are an error."""
    path = Path(path)
    names = [line.strip() for line in _read(path, "class list").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path}: the class list is empty")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: class {name!r} is listed twice")
        seen.add(name)
    return names


def read_manifest(folder: str | Path, *, check_files: bool = True) -> tuple[list[Entry], list[str], list[Problem]]:
    """The usable entries, the classes and the rows left out of a dataset folder.

    Raises :class:`DataError` when the folder, ``manifest.csv`` or ``classes.txt`` is
    missing, the header is wrong or one video (by real path, however spelled) is in both
    splits; bad rows (unknown label or split, a missing file, a path outside the folder,
    a repeated video, wrong column count) come back as problems.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist; {HINT}")
    if not manifest.is_file():
        raise DataError(f"{manifest}: no manifest in the dataset folder; {HINT}")
    classes = read_classes(folder / CLASSES)
    known = set(classes)
    reader = csv.reader(io.StringIO(_read(manifest, "manifest"), newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(f"{manifest}:{reader.line_num}: not valid CSV: {exc}") from None
    if not rows or tuple(c.strip() for c in rows[0]) != MANIFEST_COLUMNS:
        got = ",".join(rows[0]) if rows else "(empty file)"
        raise DataError(f"{manifest}:1: header must be {','.join(MANIFEST_COLUMNS)}, got {got!r}")
    entries, problems, seen = [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        reason = _row_problem(row, known)
        if reason is None and check_files and not is_video(folder / row[0].strip()):
            reason = f"video file {row[0].strip()} not found under {folder}"
        if reason is None:
            reason = _repeated(folder, manifest, line, row, seen)
        if reason is not None:
            if any(cell.strip() for cell in row):  # blank lines are not worth a report
                problems.append(Problem(str(manifest), line, reason))
            continue
        path, label, split = (cell.strip() for cell in row)
        entries.append(Entry(path, label, split, line))
    return entries, classes, problems


def _repeated(folder: Path, manifest: Path, line: int, row: list[str], seen: dict[str, Entry]) -> str | None:
    """Why the row's video (by real path) was already listed, or None; in another split: DataError."""
    path, label, split = (cell.strip() for cell in row)
    real = os.path.realpath(folder / path)
    first = seen.setdefault(real, Entry(path, label, split, line))
    if first.line == line:
        return None
    if first.split != split:
        raise DataError(f"{manifest}:{line}: video {path} is also in split {first.split!r} (line {first.line}, as "
                        f"{first.path}); a video must be in one split only: remove one of the rows")
    return f"video {path} is listed more than once (line {first.line}, as {first.path})"


def _row_problem(row: list[str], known: set[str]) -> str | None:
    if len(row) != len(MANIFEST_COLUMNS):
        return f"expected {len(MANIFEST_COLUMNS)} columns (path,label,split), got {len(row)}"
    path, label, split = (cell.strip() for cell in row)
    if not path:
        return "empty path"
    if "\0" in path:
        return "path has a NUL character"
    if os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == "..":
        return f"path {path} leaves the dataset folder; write it relative to the folder, without '..'"
    if label not in known:
        return f"label {label!r} is not in {CLASSES}"
    if split not in SPLITS:
        return f"split {split!r} is not one of {', '.join(SPLITS)}"
    return None
