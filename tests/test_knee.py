"""Knee-point fitting and stopping (docs/design.md §4): known maximisers, the stop rule, degenerate curves."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from opplan.planning.fitting import FUNCTIONS, evaluate, fit_curve, n_params, observed_argmax, table1
from opplan.planning.knee import KneeStopper, replay

# true parameters (the order of docs/design.md §4, a1..), all satisfying the sign constraints
TRUE = {
    "power": (0.9, -0.7, -0.5, 0.001, -2e-4),
    "multi-power": (0.9, -0.4, -0.3, -0.3, -1.2, 0.001, -2e-4),
    "exponential": (0.8, -0.6, -0.15, 0.002, -1e-4),
    "multi-exponential": (0.8, -0.3, -0.05, -0.3, -0.5, 0.004, -2e-4),
}


def true_maximiser(function: str) -> float:
    grid = np.arange(0.0, 200.0, 1e-3)
    return float(grid[np.argmax(evaluate(function, TRUE[function], grid))])


def true_curve(function: str, extra: int = 15) -> np.ndarray:
    """The noise-free curve, observed until ``extra`` epochs past its peak."""
    return evaluate(function, TRUE[function], np.arange(int(true_maximiser(function)) + extra + 1))


def test_evaluate_is_the_specs_formula():
    t = np.array([0.0, 1.0, 7.0])
    a = TRUE["multi-power"]
    assert_allclose(evaluate("multi-power", a, t),
                    a[0] + a[1] * (t + 1) ** a[2] + a[3] * (t + 1) ** a[4] + a[5] * t + a[6] * t**2)
    a = TRUE["exponential"]
    assert_allclose(evaluate("exponential", a, t), a[0] + a[1] * np.exp(a[2] * t) + a[3] * t + a[4] * t**2)
    assert {f: n_params(f) for f in FUNCTIONS} == {f: len(TRUE[f]) for f in FUNCTIONS}


def test_the_table_is_the_one_list_of_functions():
    """Every function of the table has its true curve above, a formula with its parameters
    a1 .. aN, and is a value plan.fit_function accepts (config takes the names from the table)."""
    import re

    from pydantic import ValidationError

    from opplan.config import PlanParams
    from opplan.planning.fitting import MAX_PARAMS, TABLE

    assert set(TRUE) == set(FUNCTIONS) == {entry.name for entry in TABLE}
    for entry in TABLE:
        assert sorted({int(i) for i in re.findall(r"a(\d+)", entry.formula)}) == list(range(1, entry.n_params + 1))
        assert PlanParams(fit_function=entry.name).fit_function == entry.name
    assert MAX_PARAMS == max(len(v) for v in TRUE.values())
    with pytest.raises(ValidationError, match="fit_function"):
        PlanParams(fit_function="cubic")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_noise_free_maximiser_within_half_an_epoch(function):
    y = true_curve(function)
    fit = fit_curve(y, function)
    assert fit is not None and fit.function == function
    assert abs(fit.t_star - true_maximiser(function)) <= 0.5
    assert_allclose(fit.predict(np.arange(y.size)), y, atol=1e-4)
    assert fit.rmse < 1e-4 and fit.r2 > 0.9999 and fit.n_points == y.size
    assert_allclose(fit.value, fit.predict(fit.t_star))


@pytest.mark.parametrize("function", ["power", "exponential"])
def test_identifiable_families_recover_their_parameters(function):
    fit = fit_curve(true_curve(function), function)
    assert_allclose(fit.params, TRUE[function], rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_maximiser_within_two_epochs(function, seed):
    y = true_curve(function)
    noisy = y + np.random.default_rng(seed).normal(0.0, 0.005, y.size)
    fit = fit_curve(noisy, function)
    assert abs(fit.t_star - true_maximiser(function)) <= 2
    assert fit.rmse == pytest.approx(0.005, rel=0.5)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_stopper_stops_at_t_star_plus_delay(function):
    y = true_curve(function, extra=40)
    t_star = round(true_maximiser(function))
    stopper = KneeStopper(function, delay=10, max_epochs=200)
    decisions = []
    for v in y:
        decisions.append(stopper.update(v))
        if decisions[-1].stop:
            break
    stop = next(d for d in decisions if d.stop)
    assert (stop.t, stop.chosen_epoch, stop.t_star, stop.reason) == (t_star + 10, t_star, t_star, "knee")
    assert all(d.fit is None for d in decisions[:10]) and decisions[10].fit is not None
    assert stop.chosen_value == pytest.approx(stop.value)


def test_replay_is_the_stopper_on_a_recorded_curve():
    y = true_curve("exponential", extra=40)
    t_star = round(true_maximiser("exponential"))
    result = replay(y, delay=10, max_epochs=200)
    assert (result.stop_epoch, result.chosen_epoch, result.t_star, result.reason) == (t_star + 10, t_star, t_star,
                                                                                      "knee")
    assert result.chosen_value == pytest.approx(result.value) and len(result.params) == 5


def test_rising_curve_stops_at_max_epochs_and_keeps_the_last_epoch():
    y = 0.2 + 0.01 * np.arange(40)
    result = replay(y, delay=5, max_epochs=25)
    assert (result.stop_epoch, result.chosen_epoch, result.reason) == (25, 25, "max_epochs")
    assert result.t_star == 999  # still rising: the knee is at the horizon
    assert result.chosen_value == pytest.approx(0.45, abs=1e-6)


def test_max_epochs_without_any_fit_keeps_the_best_observed_epoch():
    stopper = KneeStopper(delay=10, max_epochs=4)
    decisions = [stopper.update(v) for v in [0.1, 0.5, 0.3, math.nan, 0.2]]
    assert [d.stop for d in decisions] == [False, False, False, False, True]
    last = decisions[-1]
    assert (last.chosen_epoch, last.reason, last.fit, last.chosen_value) == (1, "max_epochs", None, None)


def test_failed_fit_means_go_on_training():
    stopper = KneeStopper(delay=2, max_epochs=30)
    decisions = [stopper.update(math.nan) for _ in range(31)]
    assert not any(d.stop for d in decisions[:30]) and decisions[30].stop
    assert decisions[30].chosen_epoch == 0


def test_curve_that_ends_first_has_no_stop_epoch():
    y = true_curve("exponential", extra=4)
    result = replay(y, delay=10)
    assert result.stop_epoch is None and result.reason is None
    assert result.t_star == round(true_maximiser("exponential")) and result.chosen_epoch == result.t_star
    assert set(result.to_json()) >= {"t_star", "chosen_epoch", "stop_epoch", "params", "rmse", "r2", "function"}


def test_flat_and_decreasing_curves_keep_the_starting_model():
    flat = fit_curve(np.full(20, 0.5))
    assert (flat.t_star, flat.value, flat.rmse) == (0, 0.5, 0.0) and math.isnan(flat.r2)
    falling = fit_curve(np.linspace(0.9, 0.1, 20))
    assert falling.t_star == 0 and falling.value == pytest.approx(0.9)
    result = replay(np.linspace(0.9, 0.1, 20), delay=5)
    assert (result.stop_epoch, result.chosen_epoch) == (5, 0)


def test_nan_points_are_ignored():
    y = true_curve("exponential", extra=20)
    holes = y.copy()
    holes[[3, 9, 17, 30]] = np.nan
    holes[25] = np.inf
    a, b = fit_curve(y), fit_curve(holes)
    assert b.n_points == y.size - 5 and a.t_star == b.t_star
    assert_allclose(b.params, a.params, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("curve", [[], [0.3], [0.1, 0.2], [math.nan] * 20, [0.1, math.nan, 0.3, math.nan, 0.2]])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_too_little_evidence_is_none(curve, function):
    assert fit_curve(curve, function) is None


def test_minimum_points_is_params_plus_one():
    y = true_curve("exponential")
    assert fit_curve(y[:5]) is None and fit_curve(y[:6]) is not None
    assert fit_curve(y[:7], "multi-exponential") is None and fit_curve(y[:8], "multi-exponential") is not None


@pytest.mark.parametrize("scale", [1e-300, 1e150, 1e307])
def test_huge_and_tiny_values_do_not_crash(scale):
    y = true_curve("exponential") * scale
    fit = fit_curve(y)
    if fit is not None:  # None is allowed when the result overflows
        assert fit.t_star == round(true_maximiser("exponential"))
    fit_curve([1e308, -1e308] * 10)


def test_observed_argmax():
    assert observed_argmax([0.1, math.nan, 0.4, 0.4, 0.2]) == 2
    assert observed_argmax([math.nan, math.nan]) == 0 and observed_argmax([]) == 0


@contextlib.contextmanager
def counted_refinements() -> Iterator[list[tuple[int, int]]]:
    """Every TRF refinement of the fits inside: (its ``max_nfev``, the evaluations it used).
    A fit's cost is bounded by these counts, not measured by a clock (``bench/planning.py`` times it)."""
    import scipy.optimize

    calls: list[tuple[int, int]] = []
    real = scipy.optimize.least_squares

    def counting(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((kwargs.get("max_nfev"), int(result.nfev)))
        return result

    scipy.optimize.least_squares = counting
    try:
        yield calls
    finally:
        scipy.optimize.least_squares = real


def test_a_fit_does_bounded_work():
    from opplan.planning.fitting import MAX_NFEV, N_POLISH

    y = true_curve("exponential", extra=30) + np.random.default_rng(0).normal(0, 0.005, 54)
    with counted_refinements() as calls:
        fit_curve(y)
    assert 1 <= len(calls) <= N_POLISH and all(limit == MAX_NFEV and used <= limit for limit, used in calls)


def test_table1_means_per_function():
    rng = np.random.default_rng(3)
    curves = {f"c{i}": true_curve("exponential", extra=10 + i) + rng.normal(0, 0.002, 34 + i) for i in range(4)}
    curves["flat"] = np.full(30, 0.4)
    table = table1(curves)
    assert list(table.index) == list(FUNCTIONS)
    assert (table["fitted"] == 5).all() and (table["failed"] == 0).all()
    assert table.loc["exponential", "rmse"] < 0.003 and table.loc["exponential", "r2"] > 0.99


def test_bad_function_name():
    with pytest.raises(ValueError, match="unknown fitting function"):
        fit_curve([0.1] * 10, "cubic")
    with pytest.raises(ValueError):
        KneeStopper("cubic")


curves = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                            st.floats(min_value=0, max_value=1)), max_size=60)


@settings(max_examples=40, deadline=None, database=None)
@given(curve=curves, function=st.sampled_from(FUNCTIONS), delay=st.integers(1, 12))
def test_random_curves_never_raise_and_do_bounded_work(curve, function, delay):
    from opplan.planning.fitting import MAX_NFEV, N_POLISH

    with counted_refinements() as calls:
        fit = fit_curve(curve, function)
        result = replay(curve, function=function, delay=delay, max_epochs=50)
    fits = 2 + len(curve)  # this fit, and at most one per replayed epoch
    assert len(calls) <= fits * N_POLISH and all(limit == MAX_NFEV and used <= limit for limit, used in calls)
    if fit is not None:
        assert 0 <= fit.t_star <= 999 and math.isfinite(fit.value) and math.isfinite(fit.rmse)
    if curve:
        assert 0 <= result.chosen_epoch < len(curve)


# --- docs/design.md §10: capped transitions and the keep-start rule ---------------------------------


def test_a_transition_stopped_by_max_epochs_while_rising_is_capped():
    rising = 0.8 - 0.6 * np.exp(-0.05 * np.arange(30))  # far from its plateau at epoch 6
    stopper = KneeStopper("exponential", delay=3, max_epochs=6)
    decisions = [stopper.update(y) for y in rising[:7]]
    assert decisions[-1].stop and decisions[-1].reason == "max_epochs" and decisions[-1].capped
    assert not any(d.capped for d in decisions[:-1])
    peaked = evaluate("exponential", TRUE["exponential"], np.arange(80))  # knee well before the cap
    stopper = KneeStopper("exponential", delay=3, max_epochs=int(true_maximiser("exponential")) + 2)
    last = next(d for d in (stopper.update(y) for y in peaked) if d.stop)
    assert not last.capped
    stopper = KneeStopper("exponential", delay=10, max_epochs=3)  # no fit at all: capped when the last is best
    assert [stopper.update(y) for y in (0.1, 0.2, 0.3, 0.4)][-1].capped
    stopper = KneeStopper("exponential", delay=10, max_epochs=3)
    assert not [stopper.update(y) for y in (0.1, 0.5, 0.3, 0.4)][-1].capped


def test_keep_start_rule():
    from opplan.planning.knee import keep_start_rule

    curve, se = [0.30, 0.20, 0.26, 0.22], [0.05, 0.05, 0.05, 0.05]
    # the knee says 0, but 0.30 - 0.26 = 0.04 is 0.57 SE of the difference: keep the best later epoch
    kept = keep_start_rule(curve, se, 0, 1.0)
    assert (kept.epoch, kept.reason) == (2, "best_later")
    assert kept.margin_se == pytest.approx(0.04 / math.hypot(0.05, 0.05))
    # better by more than the noise: the start is kept
    kept = keep_start_rule([0.60, 0.20, 0.26, 0.22], se, 0, 1.0)
    assert (kept.epoch, kept.reason) == (0, "start") and kept.margin_se > 1.0
    # rule off (the paper), a knee after 0, or nothing trained: the knee's epoch stands
    assert keep_start_rule(curve, se, 0, None).epoch == 0
    assert keep_start_rule(curve, se, 3, 1.0) == keep_start_rule(curve, se, 3, 1.0).__class__(3, "knee")
    assert keep_start_rule([0.3], [0.05], 0, 1.0).epoch == 0
    # unknown SEs count as none: the start must be strictly better; equal is not enough
    assert keep_start_rule([0.3, 0.3, 0.1], None, 0, 1.0).epoch == 1
    assert keep_start_rule([0.3, 0.2, math.nan], [math.nan] * 3, 0, 0.0).epoch == 0
