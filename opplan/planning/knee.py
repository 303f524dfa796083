"""Knee-point stopping of one transition (paper §3.3; docs/design.md §4).

The curve of a transition is ``y_0, ..., y_t`` (``y_0``: the starting model's validation
accuracy, ``y_k``: after epoch ``k``). After each epoch, once ``t >= T``:

1. fit ``f(t) = g(t) + h(t)`` (``g`` increasing and bounded, ``h`` a concave quadratic), one
   of the functions of :mod:`opplan.planning.fitting`;
2. take the knee ``t*``, the integer in ``[0, horizon]`` that maximises ``f``;
3. stop at the first ``t >= t* + T`` (or at ``max_epochs``) and keep epoch ``t*``.

Also here: the keep-start rule (docs/design.md §10), :func:`replay` of a recorded curve and
the optimistic bound pruning uses (docs/design.md §10b).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from opplan.planning.fitting import DEFAULT_FUNCTION, KneeFit, by_name, fit_curve, observed_argmax


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
        by_name(function)
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


def optimistic_bound(fit: KneeFit | None, curve: Sequence[float], se: float, z: float,
                     last_epoch: int | None = None) -> float | None:
    """An optimistic bound of a running transition's ``V`` (docs/design.md §10b): the
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
