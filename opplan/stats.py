"""Noise of accuracies measured on a few hundred videos: standard errors, intervals, paired
tests and the one verdict rule of OP against HS: better / non-inferior / worse / inconclusive at a
margin δ (docs/design.md, "Noise").

Pure numpy/scipy, no torch and no MLflow: planning (the SE of every transition's score and
the noise-aware DP), the report (OP against HS) and ``opplan study`` share it.

Per-video values are what every estimate starts from: ``per_video_scores`` turns a
``(videos, classes)`` score matrix into one number per video for a metric, and the metric of
a split is their mean, so the standard error of the mean over videos is the noise of the
split's score (videos are the sampling unit; classes and clips are not independent draws).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

Metric = Literal["top1", "top135", "prob"]
METRICS: tuple[str, ...] = ("top1", "top135", "prob")
Verdict = Literal["better", "non-inferior", "worse", "inconclusive"]
DEFAULT_MARGIN = 0.03
"""The non-inferiority margin δ in top-1 fractions unless a setting says otherwise (3 points)."""


def per_video_scores(scores: np.ndarray, labels: np.ndarray, metric: Metric = "top1") -> np.ndarray:
    """One value in [0, 1] per video, whose mean is the split's ``metric``.

    - ``top1``: 1 when the top-scored class is the label (the paper's validation accuracy);
    - ``top135``: the mean of the top-1, top-3 and top-5 hits (the authors' planning metric,
      ``train_3d_op.py``); with fewer than 5 classes, top-k is capped at the class count;
    - ``prob``: the score of the true class (a softmax probability when ``scores`` are
      probabilities), which moves with every video's confidence, not only at the argmax.

    ``scores`` is ``(videos, classes)``, ``labels`` is ``(videos,)`` of class indices.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    if metric == "top1":
        return (scores.argmax(axis=1) == labels).astype(np.float64)
    if metric == "prob":
        return scores[np.arange(len(labels)), labels]
    if metric == "top135":
        # rank of the true class: how many classes score strictly higher (ties count for it)
        true = scores[np.arange(len(labels)), labels]
        rank = (scores > true[:, None]).sum(axis=1)
        classes = scores.shape[1]
        return np.mean([(rank < min(k, classes)).astype(np.float64) for k in (1, 3, 5)], axis=0)
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def mean_se(values: Sequence[float] | np.ndarray) -> float:
    """Standard error of the mean of per-video values (sample SD / sqrt(n)).

    For 0/1 values this is the binomial SE with the ``n - 1`` correction.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return math.nan
    return float(x.std(ddof=1) / math.sqrt(len(x)))



@dataclass(frozen=True)
class Estimate:
    """A mean with its spread: over videos (one run) or over seeds (several runs)."""

    mean: float
    se: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"mean": self.mean, "se": self.se, "low": self.low, "high": self.high, "n": self.n}


def seed_estimate(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean over repeated runs (seeds) with a Student-t interval; one run gives no interval."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Estimate(mean, math.nan, math.nan, math.nan, n)
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    return Estimate(mean, se, mean - half, mean + half, n)


def video_estimate(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Estimate:
    """Mean over videos with a normal interval from the SE of the mean (0/1 values: top-1)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if len(x) else math.nan
    se = mean_se(x)
    half = float(sps.norm.ppf(0.5 + level / 2)) * se
    return Estimate(mean, se, mean - half, mean + half, len(x))


@dataclass(frozen=True)
class PairedComparison:
    """A against B on the same videos: difference of means, its interval, two p-values and the
    verdict at the margin ``delta``."""

    diff: float
    low: float
    high: float
    p_bootstrap: float
    p_mcnemar: float | None  # only for 0/1 values (top-1 correctness)
    n: int
    verdict: Verdict
    delta: float  # the margin the verdict was taken at

    def to_json(self) -> dict[str, float | int | str | None]:
        return {"diff": self.diff, "low": self.low, "high": self.high, "p_bootstrap": self.p_bootstrap,
                "p_mcnemar": self.p_mcnemar, "n": self.n, "verdict": self.verdict, "delta": self.delta}


def mcnemar_p(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Exact two-sided McNemar test: the videos only A gets right against those only B does."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_compare(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, level: float = 0.95,
                   reps: int = 5000, seed: int = 0, delta: float = DEFAULT_MARGIN) -> PairedComparison:
    """Paired bootstrap over videos of ``mean(a) - mean(b)`` (same videos, same order).

    The interval is the percentile interval of the resampled differences; the verdict is
    :func:`verdict` of it at the margin ``delta`` (same units as the values). For 0/1 values
    the exact McNemar p-value is given too.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired values must be two equal, non-empty 1-D arrays (got {x.shape} and {y.shape})")
    d = x - y
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(reps, len(d)))].mean(axis=1)
    low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    # two-sided bootstrap p-value: how often the resampled difference lies on the other side of 0
    p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))) if d.any() else 1.0
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    return PairedComparison(float(d.mean()), float(low), float(high), p,
                            mcnemar_p(x, y) if binary else None, len(d), verdict(float(low), float(high), delta), delta)


def verdict(low: float, high: float, delta: float) -> Verdict:
    """OP against HS from an interval [low, high] of OP - HS and the margin ``delta`` (same units).

    The one verdict rule: the report, ``opplan study`` and the logs all print it.

    - "better": low > 0 (the whole interval above 0);
    - "non-inferior": not better and low > -delta (OP at most delta worse);
    - "worse": high < 0 and low <= -delta (the interval below 0 and reaching beyond the margin);
    - "inconclusive": anything else (the interval holds 0 and reaches below -delta).
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > 0:
        return "better"
    if low > -delta:
        return "non-inferior"
    if high < 0:
        return "worse"
    return "inconclusive"


def margin_in_se(best: float, runner_up: float, se_best: float, se_runner_up: float) -> float:
    """The gap between two independently measured scores in standard errors of their difference.

    ``inf`` when there is no runner-up; ``nan`` when the SEs are unknown; with both SEs 0,
    ``+-inf`` for different scores and 0 for equal ones.
    """
    if not math.isfinite(runner_up):
        return math.inf
    se = math.hypot(se_best, se_runner_up)
    if not math.isfinite(se) or se == 0.0:
        if not math.isfinite(se):
            return math.nan
        return 0.0 if best == runner_up else math.copysign(math.inf, best - runner_up)
    return (best - runner_up) / se


def chance_level(labels: Sequence[int] | np.ndarray, classes: int, metric: Metric = "top1") -> float:
    """What a model that learned nothing about the videos scores on a split with these labels.

    Such a model still learns the class frequencies ``p_c`` of the split, so chance is:

    - ``top1``: ``max p_c`` (always the most frequent class; ``1 / classes`` when balanced);
    - ``top135``: the mean over k = 1, 3, 5 of the summed k largest ``p_c`` (always the same
      ranking, most frequent first; ``(1 + 3 + 5) / (3 classes)`` when balanced, capped at 1);
    - ``prob``: ``sum p_c^2`` (the class frequencies as its probabilities; ``1 / classes``
      when balanced, which is also what a uniform softmax scores).
    """
    y = np.asarray(labels, dtype=np.int64)
    if classes < 1 or len(y) == 0:
        return math.nan
    p = np.bincount(y, minlength=classes)[:classes] / len(y)
    if metric == "top1":
        return float(p.max())
    if metric == "top135":
        ranked = np.sort(p)[::-1]
        return float(np.mean([ranked[:k].sum() for k in (1, 3, 5)]))
    if metric == "prob":
        return float((p * p).sum())
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def within_noise_of(value: float, reference: float, se: float, z: float) -> bool:
    """Whether ``value`` lies no more than ``z`` standard errors above ``reference`` (below counts as
    within: a score under chance is no evidence of learning). An unknown SE counts as no noise."""
    se = se if se is not None and math.isfinite(se) else 0.0
    return value - reference <= z * se


def best_candidate(rows: Iterable[Mapping[str, Any]], key: str, finished: str) -> dict[str, Any] | None:
    """The row with the highest ``key`` among rows whose ``status`` is ``finished``, ties toward
    fewer ``epochs`` (HS of the grid: ``val_top1`` as a user picks it, ``top1`` the paper's
    oracle). Rows without a finite ``key`` are not candidates; None when no row is one.

    The one rule for the baselines stage (its result dicts) and the report (rows read back
    from MLflow), so that both always name the same schedule.
    """
    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else None

    scored = [dict(r) for r in rows if r.get("status") == finished and number(r.get(key)) is not None]
    return max(scored, key=lambda r: (r[key], -(number(r.get("epochs")) or 0.0)), default=None)
