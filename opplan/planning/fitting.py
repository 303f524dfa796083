"""The knee functions of paper Table 1 (docs/design.md §4) and their bounded least-squares fit.

Every fitting function is one entry of :data:`TABLE`: its formula, its term (basis, bounds
and starting rates, shared by the functions built from it), how many terms, and so its
parameter count. ``plan.fit_function``, ``opplan knee --function``, the report's Table 1 and
its knee-parameter columns all take the names and counts from here; adding a function is
one entry here and its test in tests/test_knee.py.

A function is ``f(t) = c + sum_k g(t; a_k, r_k) + lin t + quad t^2`` (``g`` increasing and
bounded, the quadratic concave), fitted by ``scipy.optimize.least_squares(method="trf")``.

Numerics (ours; the paper leaves them open):

- Conditioning: the fit runs on ``u = t / s`` (``s`` the last observed epoch) and on the
  standardised accuracies ``z = (y - mean) / std``; power terms are fitted in the
  Box-Cox form ``b ((t+1)^p - 1) / p`` (``b = a2 p``), the same functions but well
  conditioned where ``p -> 0`` turns the power into ``log(t+1)``. Parameters are
  reported in the original units of the table of docs/design.md §4 (``a1 .. a5`` / ``a1 .. a7``);
  ``f`` is an affine image of the normalised fit, so ``t*`` is the same.
- Constraints: the strict ``< 0`` of docs/design.md §4 become closed bounds ``<= 0`` (TRF needs a
  closed box); at a bound a term degenerates to a constant or vanishes and ``f`` stays
  concave. Magnitudes are boxed too, so that a degenerate fit cannot wander off:
  amplitudes, linear and quadratic terms ``|.| <= 1e4`` in normalised units, exponential
  rates ``>= -5`` per epoch, power exponents in ``[-10, -1e-3]``.
- Starting points: ``f`` is linear in every parameter but the rates/exponents. On a
  fixed grid of rates (geometric, slow to per-epoch-fast; pairs for the multi-term
  functions) the linear parameters are solved exactly by bounded linear least squares
  (``lsq_linear``); every grid point is a feasible candidate fit, the best
  ``N_POLISH`` start TRF over all parameters, and the lowest cost wins. Deterministic;
  a few milliseconds (exponential) to a few tens (multi-exponential) per fit.
- ``t*`` is the first integer where ``f`` comes within ``1e-9`` standard deviations of its
  maximum, so that a plateau (or a flat curve) gives its first epoch rather than
  whichever epoch rounding favours; for a strictly concave ``f`` it is the argmax.
- Non-finite ``y`` are ignored. Fewer finite points than parameters + 1 (no residual
  degree of freedom), or a non-finite result, is "no fit" (``None``): go on training.

scipy is imported where a fit runs, so that reading the names (``opplan.config``) stays cheap.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

BIG = 1e4  # box on amplitudes, linear and quadratic terms (normalised units)
MAX_EXP_RATE = 5.0  # exponential rates >= -5 per epoch
MAX_POW_EXPONENT = 10.0  # power exponents >= -10
MIN_POW_EXPONENT = 1e-3  # ... and <= -1e-3 (the log(t+1) limit, see POWER_TERM)
N_POLISH = 1  # grid starts refined by TRF (a 2nd changed no t* in 160 test fits)
MAX_NFEV = 100  # TRF evaluations per start
PLATEAU_TOL = 1e-9  # t*: first epoch within this many std of the maximum

Array = np.ndarray


@dataclass(frozen=True)
class Term:
    """One increasing, bounded term ``g`` with an amplitude and a rate (or exponent).

    ``basis(rate, t, s)``: the term per unit amplitude in normalised time (``s``: the last
    observed epoch), ``d_basis`` its derivative in ``rate``; ``original(rate, t)``: the term
    per unit amplitude in original units; ``to_original(amps, rates, s)``: normalised
    amplitudes and rates -> (constant to add, original amplitudes, original rates);
    ``lower(s)``/``upper(s)``: the normalised box of ``(amplitude, rate)``; ``starts(s)``: the
    rate grids for one term and for several (whose distinct combinations start a fit).
    """

    basis: Callable[[float, Array, float], Array]
    d_basis: Callable[[float, Array, float], Array]
    original: Callable[[float, Array], Array]
    to_original: Callable[[Array, list[float], float], tuple[float, Array, list[float]]]
    lower: Callable[[float], tuple[float, float]]
    upper: Callable[[float], tuple[float, float]]
    starts: Callable[[float], tuple[Array, Array]]


def _exp_starts(s: float) -> tuple[Array, Array]:
    top = 0.8 * MAX_EXP_RATE * s
    return -np.geomspace(min(0.3, top), top, 6), -np.geomspace(min(0.5, top), top, 4)


def _pow_d_basis(rate: float, t: Array, s: float) -> Array:
    x = rate * np.log1p(t)
    return (np.exp(x) * (x - 1.0) + 1.0) / (rate * rate)


def _pow_to_original(amps: Array, rates: list[float], s: float) -> tuple[float, Array, list[float]]:
    # b * ((t+1)^p - 1) / p  =  (b/p) (t+1)^p  -  b/p
    amps = amps / np.array(rates)
    return -amps.sum(), amps, rates


EXPONENTIAL_TERM = Term(
    basis=lambda rate, t, s: np.exp(rate * (t / s)),  # exp(rate * u), u = t / s
    d_basis=lambda rate, t, s: (t / s) * np.exp(rate * (t / s)),
    original=lambda rate, t: np.exp(rate * t),
    to_original=lambda amps, rates, s: (0.0, amps, [r / s for r in rates]),
    lower=lambda s: (-BIG, -MAX_EXP_RATE * s), upper=lambda s: (0.0, 0.0),
    starts=_exp_starts)
"""``a e^(r t)``, ``a, r <= 0``."""

POWER_TERM = Term(
    # The Box-Cox form ((t + 1)^p - 1) / p with coefficient b = a * p >= 0: the same functions as
    # a (t + 1)^p plus a constant, but well conditioned as p -> 0 (where the power term turns
    # into log(t + 1) and a would run off to -inf with the constant to +inf).
    basis=lambda rate, t, s: np.expm1(rate * np.log1p(t)) / rate,
    d_basis=_pow_d_basis,
    original=lambda rate, t: np.exp(rate * np.log1p(t)),
    to_original=_pow_to_original,
    lower=lambda s: (0.0, -MAX_POW_EXPONENT), upper=lambda s: (BIG, -MIN_POW_EXPONENT),
    starts=lambda s: (-np.array([0.01, 0.1, 0.3, 0.7, 1.5, 3.0, 6.0]), -np.array([0.01, 0.3, 1.0, 3.0, 8.0])))
"""``a (t+1)^p``, ``a, p < 0``."""


@dataclass(frozen=True)
class FitFunction:
    """One row of paper Table 1: ``f = c + sum_k term(t) + lin t + quad t^2``, parameters in the
    order of ``formula``: ``(c, amp1, rate1, [amp2, rate2,] lin, quad)``."""

    name: str
    formula: str
    """``f(t)`` in original units, as docs/design.md §4 writes it."""
    constraints: str
    term: Term
    terms: int

    @property
    def n_params(self) -> int:
        return 3 + 2 * self.terms


TABLE: tuple[FitFunction, ...] = (
    FitFunction("power", "a1 + a2 (t+1)^a3 + a4 t + a5 t²", "a2, a3, a5 < 0", POWER_TERM, 1),
    FitFunction("multi-power", "a1 + a2 (t+1)^a3 + a4 (t+1)^a5 + a6 t + a7 t²", "a2, a3, a4, a5, a7 < 0",
                POWER_TERM, 2),
    FitFunction("exponential", "a1 + a2 e^(a3 t) + a4 t + a5 t²", "a2, a3, a5 < 0", EXPONENTIAL_TERM, 1),
    FitFunction("multi-exponential", "a1 + a2 e^(a3 t) + a4 e^(a5 t) + a6 t + a7 t²", "a2, a3, a4, a5, a7 < 0",
                EXPONENTIAL_TERM, 2),
)
"""The fitting functions (paper Table 1, docs/design.md §4), in the order tables list them."""

_BY_NAME: dict[str, FitFunction] = {f.name: f for f in TABLE}
FUNCTIONS: tuple[str, ...] = tuple(_BY_NAME)
DEFAULT_FUNCTION = "exponential"
MAX_PARAMS = max(f.n_params for f in TABLE)
"""The most parameters any function has (the report's ``knee_param_1 ..`` columns)."""


def by_name(name: str) -> FitFunction:
    """The table's entry for ``name``; a ValueError naming the choices for another name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown fitting function {name!r}; choose from {list(FUNCTIONS)}") from None


def n_params(name: str) -> int:
    """Number of parameters of the function ``name`` (5 or 7)."""
    return by_name(name).n_params


# --- the model, in normalised units: time u = t / s, accuracy z ---------------------------


def _design(fam: FitFunction, rates: Sequence[float], t: Array, s: float) -> Array:
    """Columns ``1, phi(rate_1), [phi(rate_2),] u, u^2``: the linear part for fixed rates."""
    u = t / s
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        terms = [fam.term.basis(r, t, s) for r in rates]
    return np.column_stack([np.ones_like(t), *terms, u, u * u])


def _split(p: Array) -> tuple[Array, list[float]]:
    """Full parameters -> (linear coefficients in design-column order, rates)."""
    amps, rates = list(p[1:-2:2]), list(p[2:-2:2])
    return np.array([p[0], *amps, p[-2], p[-1]]), rates


def _join(lin: Array, rates: Sequence[float]) -> Array:
    mid = [v for pair in zip(lin[1:-2], rates) for v in pair]
    return np.array([lin[0], *mid, lin[-2], lin[-1]])


def _model(fam: FitFunction, p: Array, t: Array, s: float) -> Array:
    lin, rates = _split(p)
    return _design(fam, rates, t, s) @ lin


def _jac(fam: FitFunction, p: Array, t: Array, s: float) -> Array:
    lin, rates = _split(p)
    u = t / s
    cols = [np.ones_like(t)]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for amp, rate in zip(lin[1:-2], rates):
            cols += [fam.term.basis(rate, t, s), amp * fam.term.d_basis(rate, t, s)]
    return np.column_stack([*cols, u, u * u])


def _bounds(fam: FitFunction, s: float) -> tuple[Array, Array]:
    """The normalised box: the term's, and ``quad <= 0``."""
    lo = [-BIG] + list(fam.term.lower(s)) * fam.terms + [-BIG, -BIG]
    hi = [BIG] + list(fam.term.upper(s)) * fam.terms + [BIG, 0.0]
    return np.array(lo), np.array(hi)


def _rate_grid(fam: FitFunction, s: float) -> list[tuple[float, ...]]:
    """Deterministic rate starts: the term's grid for one term; for several, each set of
    distinct rates of its multi-term grid (pairs for two terms)."""
    single, multi = fam.term.starts(s)
    if fam.terms == 1:
        return [(float(r),) for r in single]
    return [tuple(float(r) for r in rates) for rates in itertools.combinations(multi, fam.terms)]


def _starts(fam: FitFunction, t: Array, z: Array, s: float) -> list[tuple[float, Array]]:
    """(cost, params) per grid point, linear coefficients solved exactly within their bounds."""
    from scipy.optimize import lsq_linear

    lo, hi = _bounds(fam, s)
    lin_lo, _ = _split(lo)
    lin_hi, _ = _split(hi)
    out = []
    for rates in _rate_grid(fam, s):
        design = _design(fam, rates, t, s)
        try:
            sol = lsq_linear(design, z, bounds=(lin_lo, lin_hi), method="bvls")
        except (ValueError, np.linalg.LinAlgError) as exc:
            log.debug("%s: linear start at rates %s failed: %s", fam.name, rates, exc)
            continue
        resid = design @ sol.x - z
        cost = float(resid @ resid)
        out.append((cost if math.isfinite(cost) else math.inf, _join(sol.x, rates)))
    out.sort(key=lambda c: c[0])
    return out


def _fit_normalised(fam: FitFunction, t: Array, z: Array, s: float) -> Array | None:
    """Best normalised parameters over the grid starts and their TRF refinements."""
    from scipy.optimize import least_squares

    lo, hi = _bounds(fam, s)
    candidates = _starts(fam, t, z, s)
    for _, p0 in candidates[:N_POLISH]:
        try:
            res = least_squares(lambda p: _model(fam, p, t, s) - z, np.clip(p0, lo, hi),
                                jac=lambda p: _jac(fam, p, t, s), bounds=(lo, hi), method="trf",
                                x_scale="jac", max_nfev=MAX_NFEV)
        except (ValueError, np.linalg.LinAlgError) as exc:  # non-finite residuals and the like
            log.debug("%s: TRF refinement failed: %s", fam.name, exc)
            continue
        if np.all(np.isfinite(res.x)) and np.isfinite(res.cost):
            candidates.append((2.0 * float(res.cost), res.x))
    finite = [(c, p) for c, p in candidates if math.isfinite(c) and np.all(np.isfinite(p))]
    return min(finite, key=lambda c: c[0])[1] if finite else None


def _to_original(fam: FitFunction, p: Array, s: float, scale: float, offset: float) -> Array:
    """Normalised parameters -> docs/design.md §4's ``a1, a2, ...`` for ``y = offset + scale * z``."""
    lin, rates = _split(p)
    shift, amps, rates = fam.term.to_original(lin[1:-2], rates, s)
    const = lin[0] + shift
    return _join(np.array([offset + scale * const, *(scale * amps), scale * lin[-2] / s, scale * lin[-1] / s**2]),
                 rates)


# --- public API ------------------------------------------------------------------------


@dataclass(frozen=True)
class KneeFit:
    """A fitted curve. ``params`` in the order of docs/design.md §4 and original units (``a1 .. a5`` / ``a7``).

    ``t_star``: the integer maximiser of ``f`` over ``[0, horizon]``; ``value = f(t_star)``;
    ``rmse`` and ``r2`` over the finite observed points (``r2`` NaN for a flat curve).
    """

    function: str
    params: tuple[float, ...]
    t_star: int
    value: float
    rmse: float
    r2: float
    n_points: int

    def predict(self, t: Array | Sequence[float] | float) -> Array:
        """``f(t)`` in original units."""
        return evaluate(self.function, self.params, t)


def evaluate(function: str, params: Sequence[float], t: Array | Sequence[float] | float) -> Array:
    """``f(t)`` of the table of docs/design.md §4 for ``params`` in original units (``a1, a2, ...``)."""
    fam = by_name(function)
    t = np.asarray(t, dtype=float)
    p = np.asarray(params, dtype=float)
    if p.shape != (fam.n_params,):
        raise ValueError(f"{function} takes {fam.n_params} parameters, got {p.shape}")
    lin, rates = _split(p)
    out = lin[0] + lin[-2] * t + lin[-1] * t * t
    with np.errstate(over="ignore", under="ignore"):
        for amp, rate in zip(lin[1:-2], rates):
            out = out + amp * fam.term.original(rate, t)
    return out


def fit_curve(y: Sequence[float] | Array, function: str = DEFAULT_FUNCTION, *,
              horizon: int = 999) -> KneeFit | None:
    """Fit ``function`` to ``y[0], ..., y[t]`` (index = epoch); ``None`` if there is not enough evidence.

    Non-finite values are ignored. ``None`` when fewer than ``n_params + 1`` finite points
    remain or the fit is not finite; never raises on bad data.
    """
    fam = by_name(function)
    y = np.asarray(y, dtype=float).ravel()
    t_all = np.arange(y.size, dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < fam.n_params + 1:
        return None
    t, y = t_all[ok], y[ok]
    # 1. normalise: y = k * (mean + std * z), k keeps huge values from overflowing
    k = float(np.max(np.abs(y))) or 1.0
    w = y / k
    mean, std = float(w.mean()), float(w.std())
    flat = std <= 1e-12
    z = (w - mean) / (1.0 if flat else std)
    s = float(max(t[-1], 1.0))
    # 2. fit in normalised units
    p = _fit_normalised(fam, t, z, s)
    if p is None:
        return None
    # 3. knee: first integer epoch within PLATEAU_TOL of the maximum over [0, horizon]
    grid = np.arange(horizon + 1, dtype=float)
    curve = _model(fam, p, grid, s)
    if not np.all(np.isfinite(curve)):
        return None
    t_star = int(np.argmax(curve >= curve.max() - PLATEAU_TOL))
    # 4. report in original units
    scale, offset = k * (1.0 if flat else std), k * mean
    resid = _model(fam, p, t, s) - z
    sse = float(resid @ resid)
    with np.errstate(over="ignore", invalid="ignore"):
        params = _to_original(fam, p, s, scale, offset)
        value = offset + scale * float(curve[t_star])
        rmse = scale * math.sqrt(sse / t.size)
    r2 = float("nan") if flat else 1.0 - sse / float(z @ z)
    if not (np.all(np.isfinite(params)) and math.isfinite(value) and math.isfinite(rmse)):
        return None
    return KneeFit(fam.name, tuple(float(v) for v in params), t_star, value, rmse, r2, int(t.size))


def observed_argmax(curve: Sequence[float]) -> int:
    """The first epoch with the highest finite observed value (0 if none is finite)."""
    y = np.asarray(curve, dtype=float)
    finite = np.isfinite(y)
    return int(np.argmax(np.where(finite, y, -np.inf))) if finite.any() else 0


def table1(curves: Mapping[str, Sequence[float]], functions: Sequence[str] = FUNCTIONS) -> pd.DataFrame:
    """The paper's Table 1: mean RMSE and R² of each function fitted to each whole curve.

    One row per function: ``rmse``, ``r2`` (means over the curves it could fit; R² ignores
    flat curves), ``fitted`` and ``failed`` counts.
    """
    import pandas as pd

    rows = []
    for name in functions:
        fits = [fit_curve(c, name) for c in curves.values()]
        ok = [f for f in fits if f is not None]
        r2 = [f.r2 for f in ok if math.isfinite(f.r2)]
        rows.append({"function": name,
                     "rmse": float(np.mean([f.rmse for f in ok])) if ok else float("nan"),
                     "r2": float(np.mean(r2)) if r2 else float("nan"),
                     "fitted": len(ok), "failed": len(fits) - len(ok)})
    return pd.DataFrame(rows).set_index("function")
