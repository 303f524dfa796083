"""The internal train / validation split of the original training set (paper §5.1, SPEC §5).

Stratified by class (each class gives up about the same share of its videos), seeded,
and never taking a class's last training video. Its size defaults to the size of the
original test split, as in the paper.
"""

from __future__ import annotations

import logging
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
