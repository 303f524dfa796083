"""Knee-point stopping of one transition (paper §3.3, Table 1; docs/design.md §4).

The curve of a transition is ``y_0, ..., y_t`` (``y_0``: the starting model's validation
accuracy, ``y_k``: after epoch ``k``). After each epoch, once ``t >= T``:

1. fit ``f(t) = g(t) + h(t)`` (``g`` increasing and bounded, ``h`` a concave quadratic) by
   bounded least squares, ``scipy.optimize.least_squares(method="trf")``;
2. take the knee ``t*``, the integer in ``[0, horizon]`` that maximises ``f``;
3. stop at the first ``t >= t* + T`` (or at ``max_epochs``) and keep epoch ``t*``.

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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import least_squares, lsq_linear

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FUNCTIONS = ("power", "multi-power", "exponential", "multi-exponential")
DEFAULT_FUNCTION = "exponential"

BIG = 1e4  # box on amplitudes, linear and quadratic terms (normalised units)
MAX_EXP_RATE = 5.0  # exponential rates >= -5 per epoch
MAX_POW_EXPONENT = 10.0  # power exponents >= -10
MIN_POW_EXPONENT = 1e-3  # ... and <= -1e-3 (the log(t+1) limit, see _phi)
N_POLISH = 1  # grid starts refined by TRF (a 2nd changed no t* in 160 test fits)
MAX_NFEV = 100  # TRF evaluations per start
PLATEAU_TOL = 1e-9  # t*: first epoch within this many std of the maximum


@dataclass(frozen=True)
class _Family:
    """``f = c + sum_k amp_k g_k(t) + lin t + quad t^2``, params ``(c, amp1, rate1, [amp2, rate2,] lin, quad)``."""

    name: str
    kind: str  # "exp": g = exp(rate * t); "pow": g = (t + 1) ** rate
    terms: int

    @property
    def n_params(self) -> int:
        return 3 + 2 * self.terms


FAMILIES = {
    "power": _Family("power", "pow", 1),
    "multi-power": _Family("multi-power", "pow", 2),
    "exponential": _Family("exponential", "exp", 1),
    "multi-exponential": _Family("multi-exponential", "exp", 2),
}


def _family(function: str) -> _Family:
    try:
        return FAMILIES[function]
    except KeyError:
        raise ValueError(f"unknown fitting function {function!r}; choose from {list(FUNCTIONS)}") from None


def n_params(function: str) -> int:
    """Number of parameters of ``function`` (5 or 7)."""
    return _family(function).n_params


# --- the model, in normalised units: time u = t / s, accuracy z ---------------------------


def _phi(fam: _Family, rate: float, t: np.ndarray, s: float) -> np.ndarray:
    """The basis of one ``g`` term for a rate/exponent (normalised parametrisation).

    exp: ``exp(rate * u)`` with ``u = t / s``. pow: the Box-Cox form
    ``((t + 1)^p - 1) / p`` whose coefficient ``b = a2 * p >= 0``: the same functions as
    ``a2 (t + 1)^p`` plus a constant, but well conditioned as ``p -> 0`` (where the power
    term turns into ``log(t + 1)`` and ``a2`` would run off to -inf with ``a1`` to +inf).
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if fam.kind == "exp":
            return np.exp(rate * (t / s))
        return np.expm1(rate * np.log1p(t)) / rate


def _dphi(fam: _Family, rate: float, t: np.ndarray, s: float) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if fam.kind == "exp":
            return (t / s) * np.exp(rate * (t / s))
        x = rate * np.log1p(t)
        return (np.exp(x) * (x - 1.0) + 1.0) / (rate * rate)


def _design(fam: _Family, rates: Sequence[float], t: np.ndarray, s: float) -> np.ndarray:
    """Columns ``1, phi(rate_1), [phi(rate_2),] u, u^2``: the linear part for fixed rates."""
    u = t / s
    return np.column_stack([np.ones_like(t), *(_phi(fam, r, t, s) for r in rates), u, u * u])


def _split(fam: _Family, p: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Full parameters -> (linear coefficients in design-column order, rates)."""
    amps, rates = list(p[1:-2:2]), list(p[2:-2:2])
    return np.array([p[0], *amps, p[-2], p[-1]]), rates


def _join(lin: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    mid = [v for pair in zip(lin[1:-2], rates) for v in pair]
    return np.array([lin[0], *mid, lin[-2], lin[-1]])


def _model(fam: _Family, p: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    lin, rates = _split(fam, p)
    return _design(fam, rates, t, s) @ lin


def _jac(fam: _Family, p: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    lin, rates = _split(fam, p)
    u = t / s
    cols = [np.ones_like(t)]
    for amp, rate in zip(lin[1:-2], rates):
        cols += [_phi(fam, rate, t, s), amp * _dphi(fam, rate, t, s)]
    return np.column_stack([*cols, u, u * u])


def _bounds(fam: _Family, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised box: exp ``amp <= 0, rate <= 0``; pow ``b >= 0, p <= -MIN_POW_EXPONENT``; ``quad <= 0``."""
    if fam.kind == "exp":
        term_lo, term_hi = [-BIG, -MAX_EXP_RATE * s], [0.0, 0.0]
    else:
        term_lo, term_hi = [0.0, -MAX_POW_EXPONENT], [BIG, -MIN_POW_EXPONENT]
    lo = [-BIG] + term_lo * fam.terms + [-BIG, -BIG]
    hi = [BIG] + term_hi * fam.terms + [BIG, 0.0]
    return np.array(lo), np.array(hi)


def _rate_grid(fam: _Family, s: float) -> list[tuple[float, ...]]:
    """Deterministic rate starts: slow to per-epoch-fast (exp, in u units) or shallow to steep (pow)."""
    if fam.kind == "exp":
        top = 0.8 * MAX_EXP_RATE * s
        single = -np.geomspace(min(0.3, top), top, 6)
        pair = -np.geomspace(min(0.5, top), top, 4)
    else:
        single = -np.array([0.01, 0.1, 0.3, 0.7, 1.5, 3.0, 6.0])
        pair = -np.array([0.01, 0.3, 1.0, 3.0, 8.0])
    if fam.terms == 1:
        return [(float(r),) for r in single]
    return [(float(a), float(b)) for i, a in enumerate(pair) for b in pair[i + 1:]]


def _starts(fam: _Family, t: np.ndarray, z: np.ndarray, s: float) -> list[tuple[float, np.ndarray]]:
    """(cost, params) per grid point, linear coefficients solved exactly within their bounds."""
    lo, hi = _bounds(fam, s)
    lin_lo, _ = _split(fam, lo)
    lin_hi, _ = _split(fam, hi)
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


def _fit_normalised(fam: _Family, t: np.ndarray, z: np.ndarray, s: float) -> np.ndarray | None:
    """Best normalised parameters over the grid starts and their TRF refinements."""
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

    def predict(self, t: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """``f(t)`` in original units."""
        return evaluate(self.function, self.params, t)


def evaluate(function: str, params: Sequence[float], t: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """``f(t)`` of the table of docs/design.md §4 for ``params`` in original units (``a1, a2, ...``)."""
    fam = _family(function)
    t = np.asarray(t, dtype=float)
    p = np.asarray(params, dtype=float)
    if p.shape != (fam.n_params,):
        raise ValueError(f"{function} takes {fam.n_params} parameters, got {p.shape}")
    lin, rates = _split(fam, p)
    out = lin[0] + lin[-2] * t + lin[-1] * t * t
    with np.errstate(over="ignore", under="ignore"):
        for amp, rate in zip(lin[1:-2], rates):
            out = out + amp * (np.exp(rate * t) if fam.kind == "exp" else np.exp(rate * np.log1p(t)))
    return out


def fit_curve(y: Sequence[float] | np.ndarray, function: str = DEFAULT_FUNCTION, *,
              horizon: int = 999) -> KneeFit | None:
    """Fit ``function`` to ``y[0], ..., y[t]`` (index = epoch); ``None`` if there is not enough evidence.

    Non-finite values are ignored. ``None`` when fewer than ``n_params + 1`` finite points
    remain or the fit is not finite; never raises on bad data.
    """
    fam = _family(function)
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


def _to_original(fam: _Family, p: np.ndarray, s: float, scale: float, offset: float) -> np.ndarray:
    """Normalised parameters -> docs/design.md §4's ``a1, a2, ...`` for ``y = offset + scale * z``."""
    lin, rates = _split(fam, p)
    const, amps = lin[0], lin[1:-2]
    if fam.kind == "exp":
        rates = [r / s for r in rates]
    else:  # b * ((t+1)^p - 1) / p  =  (b/p) (t+1)^p  -  b/p
        amps = amps / np.array(rates)
        const = const - amps.sum()
    return _join(np.array([offset + scale * const, *(scale * amps), scale * lin[-2] / s, scale * lin[-1] / s**2]),
                 rates)


def observed_argmax(curve: Sequence[float]) -> int:
    """The first epoch with the highest finite observed value (0 if none is finite)."""
    y = np.asarray(curve, dtype=float)
    finite = np.isfinite(y)
    return int(np.argmax(np.where(finite, y, -np.inf))) if finite.any() else 0


@dataclass(frozen=True)
class KneeDecision:
    """What :meth:`KneeStopper.update` says after epoch ``t``.

    ``t_star``/``value``/``fit``: this epoch's fit (``None`` before ``t >= T``, with too few
    points, or when the fit failed). ``stop``: the transition ends now. When it does,
    ``chosen_epoch`` is the epoch whose checkpoint to keep (``<= t``) and ``chosen_value``
    is ``f(chosen_epoch)`` of the fit used (``None`` when there is none: then the caller's
    fitted score falls back on the observed one). ``reason``: ``"knee"`` or ``"max_epochs"``.
    ``capped``: stopped by ``max_epochs`` while the curve still rose: the latest fit's knee
    lies at or beyond the last epoch (``t* >= t``), or, with no fit, the best observed value
    is the last one. Such a transition was cut short by the cap, not by its knee.
    """

    t: int
    stop: bool
    t_star: int | None = None
    value: float | None = None
    fit: KneeFit | None = None
    chosen_epoch: int | None = None
    chosen_value: float | None = None
    reason: str | None = None
    capped: bool = False


class KneeStopper:
    """The online stopping rule of §3.3: feed ``y_0, y_1, ...`` to :meth:`update`, one per epoch.

    Fits once ``t >= delay``; stops at the first ``t >= t* + delay`` and keeps ``t*``, or at
    ``t >= max_epochs``. At ``max_epochs`` the kept epoch is ``min(t*, t)`` of the latest
    successful fit, or, with no fit at all, the epoch of the best observed value
    (:func:`observed_argmax`). A failed fit never stops the transition (docs/design.md §4).
    """

    def __init__(self, function: str = DEFAULT_FUNCTION, delay: int = 10, max_epochs: int = 100,
                 horizon: int = 999) -> None:
        _family(function)
        if delay < 1 or max_epochs < 1 or horizon < 1:
            raise ValueError(f"delay, max_epochs and horizon must be >= 1, got {delay}, {max_epochs}, {horizon}")
        self.function, self.delay, self.max_epochs, self.horizon = function, delay, max_epochs, horizon
        self.curve: list[float] = []
        self.last_fit: KneeFit | None = None

    def update(self, y: float) -> KneeDecision:
        """Record ``y_t`` (``t`` = number of earlier updates) and decide whether to stop."""
        self.curve.append(float(y))
        t = len(self.curve) - 1
        fit = fit_curve(self.curve, self.function, horizon=self.horizon) if t >= self.delay else None
        if fit is not None:
            self.last_fit = fit
        now = {"t_star": fit.t_star, "value": fit.value, "fit": fit} if fit is not None else {}
        if fit is not None and t >= fit.t_star + self.delay:
            return KneeDecision(t, True, **now, chosen_epoch=fit.t_star, chosen_value=fit.value, reason="knee")
        if t >= self.max_epochs:
            ref = fit or self.last_fit
            chosen = min(ref.t_star, t) if ref is not None else observed_argmax(self.curve)
            chosen_value = float(ref.predict(chosen)) if ref is not None else None
            capped = ref.t_star >= t if ref is not None else chosen == t
            return KneeDecision(t, True, **now, chosen_epoch=chosen, chosen_value=chosen_value, reason="max_epochs",
                                capped=capped)
        return KneeDecision(t, False, **now)


@dataclass(frozen=True)
class KeepStart:
    """The outcome of :func:`keep_start_rule`: the epoch to keep and why.

    ``reason``: ``"knee"`` (the knee's epoch stands: it is not 0, or the rule is off),
    ``"start"`` (epoch 0 is better than every later epoch by more than the noise) or
    ``"best_later"`` (the knee said 0 but the start is not better by more than the noise:
    the best later epoch is kept instead). ``margin_se``: how far the start lies above the
    best later epoch in standard errors of their difference (``None`` when not compared).
    """

    epoch: int
    reason: str
    margin_se: float | None = None


def keep_start_rule(curve: Sequence[float], curve_se: Sequence[float] | None, chosen: int,
                    z: float | None) -> KeepStart:
    """Whether a transition whose knee says ``t* = 0`` really keeps its start model (docs/design.md §10).

    The rule: when the knee's epoch ``chosen`` is 0 and the transition trained at least one
    epoch, let ``b`` be the first epoch ``1 .. t`` with the best observed value. The start is
    kept only when ``(y_0 - y_b) / sqrt(se_0^2 + se_b^2) > z`` (:func:`opplan.stats.margin_in_se`:
    the start is better than the best later epoch by more than ``z`` standard errors of the
    difference); otherwise epoch ``b`` is kept. Unknown SEs count as 0 (the start must then be
    strictly better). ``z = None`` turns the rule off (the paper: keep what the knee says).
    On a flat, noisy curve the knee often lands at 0 because epoch 0 happens to be high; the
    rule stops such noise from handing the next state an untrained model.
    """
    from opplan.stats import margin_in_se

    y = np.asarray(curve, dtype=float)
    if z is None or chosen != 0 or y.size < 2 or not np.isfinite(y[1:]).any():
        return KeepStart(chosen, "knee")
    later = y[1:]
    b = 1 + int(np.argmax(np.where(np.isfinite(later), later, -np.inf)))
    se = np.zeros(y.size) if curve_se is None else np.asarray(curve_se, dtype=float)
    se0, seb = (float(v) if math.isfinite(v) else 0.0 for v in (se[0], se[b]))
    margin = margin_in_se(float(y[0]), float(y[b]), se0, seb) if math.isfinite(y[0]) else -math.inf
    if margin > z:
        return KeepStart(0, "start", margin)
    return KeepStart(b, "best_later", margin)


@dataclass(frozen=True)
class ReplayResult:
    """:func:`replay` of a recorded curve. ``stop_epoch`` is ``None`` when the curve ends first.

    ``t_star``/``params``/``rmse``/``r2``/``value`` (``f(t*)``) come from the last successful
    fit, ``chosen_value`` is ``f(chosen_epoch)``; all ``None`` without a fit.
    """

    function: str
    t_star: int | None
    chosen_epoch: int | None
    stop_epoch: int | None
    params: tuple[float, ...] | None
    rmse: float | None
    r2: float | None
    value: float | None
    chosen_value: float | None
    reason: str | None

    def to_json(self) -> dict:
        def clean(v: float | None) -> float | None:
            return v if v is None or math.isfinite(v) else None

        return {"t_star": self.t_star, "chosen_epoch": self.chosen_epoch, "stop_epoch": self.stop_epoch,
                "params": None if self.params is None else [clean(v) for v in self.params],
                "rmse": clean(self.rmse), "r2": clean(self.r2), "value": clean(self.value),
                "chosen_value": clean(self.chosen_value), "function": self.function, "reason": self.reason}


def replay(curve: Sequence[float], *, function: str = DEFAULT_FUNCTION, delay: int = 10, max_epochs: int = 100,
           horizon: int = 999) -> ReplayResult:
    """Run the online procedure on a recorded curve ``y_0 .. y_n`` as if it were being trained.

    If the curve ends before the rule stops, the kept epoch is ``min(t*, n)`` of the last
    fit (or the best observed epoch without a fit) and ``stop_epoch`` is ``None``.
    """
    stopper = KneeStopper(function, delay, max_epochs, horizon)
    decision: KneeDecision | None = None
    for y in curve:
        decision = stopper.update(y)
        if decision.stop:
            break
    fit = stopper.last_fit
    if decision is not None and decision.stop:
        chosen, stop, reason = decision.chosen_epoch, decision.t, decision.reason
    elif decision is not None:
        chosen = min(fit.t_star, decision.t) if fit is not None else observed_argmax(stopper.curve)
        stop, reason = None, None
    else:
        chosen = stop = reason = None
    if fit is None:
        return ReplayResult(function, None, chosen, stop, None, None, None, None, None, reason)
    chosen_value = None if chosen is None else float(fit.predict(chosen))
    return ReplayResult(function, fit.t_star, chosen, stop, fit.params, fit.rmse, fit.r2, fit.value, chosen_value,
                        reason)


def table1(curves: Mapping[str, Sequence[float]], functions: Sequence[str] = FUNCTIONS) -> pd.DataFrame:
    """The paper's Table 1: mean RMSE and R² of each function fitted to each whole curve.

    One row per function: ``rmse``, ``r2`` (means over the curves it could fit; R² ignores
    flat curves), ``fitted`` and ``failed`` counts.
    """
    import pandas as pd

    rows = []
    for function in functions:
        fits = [fit_curve(c, function) for c in curves.values()]
        ok = [f for f in fits if f is not None]
        r2 = [f.r2 for f in ok if math.isfinite(f.r2)]
        rows.append({"function": function,
                     "rmse": float(np.mean([f.rmse for f in ok])) if ok else float("nan"),
                     "r2": float(np.mean(r2)) if r2 else float("nan"),
                     "fitted": len(ok), "failed": len(fits) - len(ok)})
    return pd.DataFrame(rows).set_index("function")


def optimistic_bound(fit: KneeFit | None, curve: Sequence[float], se: float, z: float,
                     last_epoch: int | None = None) -> float | None:
    """An optimistic bound of a running transition's ``V`` (docs/design.md, "Pruning"): the
    best of the knee fit's peak over the epochs the transition may still reach (``0 ..
    last_epoch``, ``plan.max_epochs``; ``None``: the fit's horizon, ``fit.value``) and the best
    observed point, at most 1 (every planning metric is a fraction), plus ``z`` standard
    errors ``se`` (unknown: 0). ``None`` before the first fit: a transition is never pruned
    on too few points (``plan.delay``), nor on a curve no fit describes."""
    if fit is None or not math.isfinite(fit.value):
        return None
    peak = float(fit.value)
    if last_epoch is not None and last_epoch < fit.t_star:
        peak = float(np.max(fit.predict(np.arange(last_epoch + 1))))
    y = np.asarray(curve, dtype=float)
    best = max(peak, float(np.nanmax(y)) if np.isfinite(y).any() else -math.inf)
    return min(best, 1.0) + z * (float(se) if math.isfinite(se) else 0.0)
