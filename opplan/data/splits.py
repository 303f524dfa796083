"""The internal train / validation split of the original training set (paper §5.1, docs/design.md §5).

Stratified by class (each class gives up about the same share of its videos), seeded,
and never taking a class's last training video. Its size defaults to the size of the
original test split, as in the paper.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from opplan.errors import DataError

log = logging.getLogger(__name__)


def validation_count(val_size: int | float | None, num_train: int, num_test: int) -> int:
    """The requested size: a count, a fraction of the training set, or ``None`` for the
    size of the original test split (before per-class clipping)."""
    if val_size is None:
        if num_test == 0:
            raise DataError(
                "prepare.val_size is null (the size of the test split) but the dataset has no test split; "
                "set prepare.val_size to a count or a fraction of the training set"
            )
        return num_test
    if isinstance(val_size, float) and val_size < 1:
        return round(val_size * num_train)
    return int(val_size)


def class_quotas(counts: Sequence[int], total: int) -> np.ndarray:
    """Validation videos per class: proportional to ``counts`` (largest remainders),
    at most ``count - 1`` per class, summing to ``min(total, sum(count - 1))``."""
    counts = np.asarray(counts, dtype=np.int64)
    caps = np.maximum(counts - 1, 0)
    total = min(int(total), int(caps.sum()))
    ideal = total * counts / max(int(counts.sum()), 1)
    quota = np.minimum(np.floor(ideal).astype(np.int64), caps)
    while quota.sum() < total:  # hand out the rest to the classes furthest below their share
        deficit = np.where(quota < caps, ideal - quota, -np.inf)
        quota[int(np.argmax(deficit))] += 1
    return quota


def stratified_split(labels: Sequence[int], val_count: int, seed: int) -> np.ndarray:
    """(N,) bool mask of the videos that go to internal validation.

    Deterministic in ``seed`` and the order of ``labels``; each class keeps at least
    one training video, so fewer than ``val_count`` may be chosen (logged).
    """
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    quotas = class_quotas([len(m) for m in members], val_count)
    if quotas.sum() < val_count:
        log.warning("internal validation: %d videos asked for, %d possible (each class keeps one training video)",
                    val_count, int(quotas.sum()))
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for chosen, quota in zip(members, quotas):
        is_val[chosen[rng.permutation(len(chosen))[:quota]]] = True
    return is_val


def check_classes(train: Sequence[str], test: Sequence[str], *, warn: bool = True) -> None:
    """Refuse fewer than two training classes (every score would be 1.0); warn about classes
    too small for the splits: under two training videos (none can go to internal validation)
    or no test video."""
    counts = Counter(train)
    if len(counts) < 2:
        raise DataError(f"the training split holds {len(counts)} class(es) ({', '.join(sorted(counts)) or 'none'}): "
                        "classification needs at least two, or every accuracy is 1.0; add videos of other classes")
    if not warn:
        return
    thin = sorted(name for name, n in counts.items() if n < 2)
    if thin:
        log.warning("%d class(es) have fewer than 2 training videos, so none goes to internal validation: %s",
                    len(thin), _names(thin))
    untested = sorted(set(counts) - set(test))
    if test and untested:
        log.warning("%d class(es) have no test video: %s", len(untested), _names(untested))


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
