"""Statistics over replicates of the whole procedure (docs/study.md, "Statistics").

Each replicate r gives, per side, one 0/1 correctness per held-out video (the same videos in
every replicate: one data seed per study). Two sources of noise are in the result: the
procedure (planning, grid and retrain seeds: replicate to replicate) and the test videos.

- :func:`two_level_bootstrap` resamples replicates, then videos within each resampled
  replicate (the same video draw for both sides: the comparison is paired), and gives
  percentile intervals of each side's top-1 and of the difference;
- :func:`t_interval` is the Student-t interval over the replicates' differences;
- the verdict of an interval at the margin delta is :func:`opplan.stats.verdict`, the rule
  the report prints too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Bootstrap:
    """Two-level bootstrap of A, B and A - B; ``p_zero``: two-sided p of A - B = 0,
    ``p_margin``: one-sided p of A - B <= -delta (each at least 1 / reps, see :func:`p_text`)."""

    a: Interval
    b: Interval
    diff: Interval
    p_zero: float
    p_margin: float
    reps: int

    def to_json(self) -> dict[str, object]:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "diff": self.diff.to_json(), "p_zero": self.p_zero,
                "p_zero_text": p_text(self.p_zero, self.reps), "p_margin": self.p_margin,
                "p_margin_text": p_text(self.p_margin, self.reps), "reps": self.reps}


def _matrix(x: np.ndarray | list[list[float]]) -> np.ndarray:
    m = np.asarray(x, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"expected (replicates, videos) values, got shape {m.shape}")
    return m


def two_level_bootstrap(a: np.ndarray | list[list[float]], b: np.ndarray | list[list[float]], *, delta: float,
                        reps: int = 10000, level: float = 0.95, seed: int = 0) -> Bootstrap:
    """``a`` and ``b``: ``(replicates, videos)`` per-video values of the same videos (paired).

    Each of ``reps`` draws picks R replicates with replacement, then N videos with replacement
    within each picked replicate (one draw of videos per picked replicate, used for both
    sides), and averages. Intervals are percentile intervals at ``level``."""
    a, b = _matrix(a), _matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"sides do not pair: {a.shape} vs {b.shape}")
    r, n = a.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // (r * n))
    ma, mb = np.empty(reps), np.empty(reps)
    for start in range(0, reps, chunk):
        k = min(chunk, reps - start)
        rows = rng.integers(0, r, size=(k, r))
        cols = rng.integers(0, n, size=(k, r, n))
        ma[start:start + k] = a[rows[:, :, None], cols].mean(axis=(1, 2))
        mb[start:start + k] = b[rows[:, :, None], cols].mean(axis=(1, 2))
    d = ma - mb
    q = [0.5 - level / 2, 0.5 + level / 2]

    def interval(values: np.ndarray, centre: float) -> Interval:
        low, high = np.quantile(values, q)
        return Interval(centre, float(low), float(high))

    diff_mean = float(a.mean() - b.mean())
    p_zero = 1.0 if not d.any() else float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
    p_margin = float((d <= -delta).mean())
    return Bootstrap(interval(ma, float(a.mean())), interval(mb, float(b.mean())), interval(d, diff_mean),
                     p_zero, p_margin, reps)


def t_interval(values: list[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Mean of per-replicate values with a Student-t interval (NaN bounds for one replicate)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan)
    half = float(sps.t.ppf(0.5 + level / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half)


def p_text(p: float, reps: int) -> str:
    """A bootstrap p-value; below the bootstrap's resolution as ``< 1/B``."""
    if p * reps < 1:
        return f"< 1/{reps}"
    return f"{p:.4f}" if p < 0.01 else f"{p:.3f}"
