"""Recorded performance-epoch curves as CSV files (``opplan knee``, Table 1).

Format: a header with at least the columns ``epoch`` and ``val_acc``, then one row per
epoch, epochs strictly increasing from 0 (``y_0``, the starting model) or 1 (``y_0``
then counts as missing). Accuracies are fractions in [0, 1]. Skipped epochs and empty or
``nan`` accuracies are missing values, which the knee fit ignores.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from opplan.errors import OpplanError

MAX_EPOCH = 100_000  # a guard against a typo allocating gigabytes
MAX_BYTES = 16 << 20  # a curve of MAX_EPOCH rows is a few MiB


def _shown(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut to ``limit`` characters with the length when longer (a field may be huge)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _epoch(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise OpplanError(f"{where}: epoch {_shown(text)} is not a number") from None
    if not value.is_integer() or not 0 <= value <= MAX_EPOCH:
        raise OpplanError(f"{where}: epoch {_shown(text)} must be a whole number in [0, {MAX_EPOCH}]")
    return int(value)


def _accuracy(text: str, where: str) -> float:
    if text.strip() == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise OpplanError(f"{where}: val_acc {_shown(text)} is not a number") from None
    if not (math.isnan(value) or 0 <= value <= 1):
        raise OpplanError(f"{where}: val_acc {_shown(text.strip())} must be a fraction in [0, 1] (empty or nan for "
                          "a missing epoch; divide percentages by 100)")
    return value


def read_curve(path: str | Path) -> np.ndarray:
    """``y_0 .. y_n`` (float64, NaN where missing) from a ``epoch,val_acc`` CSV file.

    Raises :class:`OpplanError` naming the file and line on a malformed file.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise OpplanError(f"{path}: {path.stat().st_size} bytes is too large for a curve (at most {MAX_BYTES})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OpplanError(f"{path}: no such curve file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OpplanError(f"{path}: cannot read: {exc}") from None
    reader = csv.reader(text.splitlines())
    try:
        table = list(reader)
    except csv.Error as exc:  # a field over csv's limit (128 KiB), a NUL byte, ...
        raise OpplanError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
    rows = iter(table)
    header = [h.strip() for h in next(rows, [])]
    if "epoch" not in header or "val_acc" not in header:
        raise OpplanError(f"{path}:1: expected a header with the columns epoch,val_acc, got {_shown(','.join(header))}")
    ie, iy = header.index("epoch"), header.index("val_acc")
    values: dict[int, float] = {}
    last = -1
    for line, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}:{line}"
        if len(row) != len(header):
            raise OpplanError(f"{where}: expected {len(header)} fields, got {len(row)}")
        epoch = _epoch(row[ie], where)
        if last < 0 and epoch > 1:
            raise OpplanError(f"{where}: the curve must start at epoch 0 or 1, got {epoch}")
        if epoch <= last:
            raise OpplanError(f"{where}: epochs must increase, got {epoch} after {last}")
        values[epoch] = _accuracy(row[iy], where)
        last = epoch
    if not values:
        raise OpplanError(f"{path}: no data rows after the header")
    curve = np.full(last + 1, np.nan)
    curve[list(values)] = list(values.values())
    return curve


def read_curves(folder: str | Path) -> dict[str, np.ndarray]:
    """Every ``*.csv`` curve of ``folder`` by file stem, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OpplanError(f"{folder}: not a folder of curve CSV files")
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise OpplanError(f"{folder}: no *.csv curve files")
    return {f.stem: read_curve(f) for f in files}
