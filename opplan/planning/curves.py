"""Recorded performance-epoch curves as CSV files (``opplan knee``, Table 1).

Format: a header with at least the columns ``epoch`` and ``val_acc``, then one row per
epoch, epochs strictly increasing from 0 (``y_0``, the starting model) or 1 (``y_0``
then counts as missing). Skipped epochs and empty or ``nan`` accuracies are missing
values, which the knee fit ignores.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from opplan.errors import OpplanError

MAX_EPOCH = 100_000  # a guard against a typo allocating gigabytes


def _epoch(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise OpplanError(f"{where}: epoch {text!r} is not a number") from None
    if not value.is_integer() or not 0 <= value <= MAX_EPOCH:
        raise OpplanError(f"{where}: epoch {text!r} must be a whole number in [0, {MAX_EPOCH}]")
    return int(value)


def _accuracy(text: str, where: str) -> float:
    if text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise OpplanError(f"{where}: val_acc {text!r} is not a number") from None


def read_curve(path: str | Path) -> np.ndarray:
    """``y_0 .. y_n`` (float64, NaN where missing) from a ``epoch,val_acc`` CSV file.

    Raises :class:`OpplanError` naming the file and line on a malformed file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OpplanError(f"{path}: no such curve file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OpplanError(f"{path}: cannot read: {exc}") from None
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows, [])]
    if "epoch" not in header or "val_acc" not in header:
        raise OpplanError(f"{path}:1: expected a header with the columns epoch,val_acc, got {','.join(header)!r}")
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
