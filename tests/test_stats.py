"""opplan.stats: the noise estimates against cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from opplan import stats


def test_mean_se_of_zero_one_values_is_the_binomial_se_with_bessel() -> None:
    values = np.array([1] * 30 + [0] * 70, dtype=float)
    p, n = 0.3, 100
    assert stats.mean_se(values) == pytest.approx(math.sqrt(p * (1 - p) / n) * math.sqrt(n / (n - 1)))


def test_per_video_scores_for_each_metric() -> None:
    scores = np.array([[0.6, 0.3, 0.1, 0.0, 0.0, 0.0],   # label 0: rank 0
                       [0.5, 0.2, 0.1, 0.1, 0.05, 0.05],  # label 2: rank 2 (ties count for it)
                       [0.5, 0.2, 0.1, 0.1, 0.06, 0.04]])  # label 5: rank 5
    labels = np.array([0, 2, 5])
    assert_allclose(stats.per_video_scores(scores, labels, "top1"), [1, 0, 0])
    assert_allclose(stats.per_video_scores(scores, labels, "top135"), [1, 2 / 3, 0])
    assert_allclose(stats.per_video_scores(scores, labels, "prob"), [0.6, 0.1, 0.04])
    with pytest.raises(ValueError, match="unknown metric"):
        stats.per_video_scores(scores, labels, "top7")  # type: ignore[arg-type]


def test_top135_caps_k_at_the_class_count() -> None:
    scores = np.array([[0.2, 0.8], [0.9, 0.1]])
    assert_allclose(stats.per_video_scores(scores, np.array([0, 0]), "top135"), [2 / 3, 1.0])


def test_seed_estimate_uses_student_t() -> None:
    est = stats.seed_estimate([0.40, 0.44, 0.42])
    assert est.mean == pytest.approx(0.42)
    assert est.se == pytest.approx(0.02 / math.sqrt(3))
    assert est.high - est.mean == pytest.approx(4.302653 * est.se, rel=1e-5)  # t(0.975, 2)
    assert math.isnan(stats.seed_estimate([0.5]).low)


def test_paired_compare_detects_a_real_difference_and_calls_noise_noise() -> None:
    rng = np.random.default_rng(0)
    b = (rng.random(400) < 0.5).astype(float)
    better = b.copy()
    better[np.flatnonzero(b == 0)[:60]] = 1.0  # A right on 60 more videos, never worse
    result = stats.paired_compare(better, b)
    assert result.verdict == "better" and result.diff == pytest.approx(0.15)
    assert result.p_mcnemar is not None and result.p_mcnemar < 1e-10
    assert stats.paired_compare(b, better).verdict == "worse"
    # the same videos flipped both ways: no difference on average
    same = b.copy()
    same[np.flatnonzero(b == 0)[:5]] = 1.0
    same[np.flatnonzero(b == 1)[:5]] = 0.0
    noise = stats.paired_compare(same, b)
    assert noise.diff == 0.0 and noise.p_mcnemar == pytest.approx(1.0)
    # no difference: non-inferior at 3 points, inconclusive at a margin the interval reaches past
    assert noise.low > -0.03 and noise.verdict == "non-inferior"
    assert stats.paired_compare(same, b, delta=-noise.low / 2).verdict == "inconclusive"
    assert noise.delta == 0.03 and noise.to_json()["delta"] == 0.03


def test_paired_compare_refuses_unpaired_values() -> None:
    with pytest.raises(ValueError, match="paired"):
        stats.paired_compare([1.0, 0.0], [1.0])


def test_mcnemar_exact_value() -> None:
    # 10 discordant pairs, 9 of them for A: two-sided exact binomial p = 22/1024
    a = np.array([1] * 9 + [0] + [1] * 5, dtype=bool)
    b = np.array([0] * 9 + [1] + [1] * 5, dtype=bool)
    assert stats.mcnemar_p(a, b) == pytest.approx(22 / 1024)


def test_margin_in_se() -> None:
    assert stats.margin_in_se(0.6, 0.5, 0.03, 0.04) == pytest.approx(2.0)
    assert stats.margin_in_se(0.6, -math.inf, 0.03, 0.04) == math.inf
    assert math.isnan(stats.margin_in_se(0.6, 0.5, math.nan, 0.04))


def test_chance_levels_per_metric() -> None:
    balanced = np.repeat(np.arange(5), 4)
    assert stats.chance_level(balanced, 5, "top1") == pytest.approx(0.2)
    assert stats.chance_level(balanced, 5, "top135") == pytest.approx((0.2 + 0.6 + 1.0) / 3)
    assert stats.chance_level(balanced, 5, "prob") == pytest.approx(0.2)
    skewed = np.array([0] * 6 + [1] * 2 + [2] * 2)  # 3 classes at 0.6 / 0.2 / 0.2
    assert stats.chance_level(skewed, 3, "top1") == pytest.approx(0.6)
    assert stats.chance_level(skewed, 3, "top135") == pytest.approx((0.6 + 1 + 1) / 3)
    assert stats.chance_level(skewed, 3, "prob") == pytest.approx(0.36 + 0.04 + 0.04)
    # a constant model scores exactly the top-1 chance level
    scores = np.tile([0.5, 0.3, 0.2], (len(skewed), 1))
    assert stats.per_video_scores(scores, skewed, "top1").mean() == pytest.approx(stats.chance_level(skewed, 3))
    assert math.isnan(stats.chance_level([], 3))


def test_within_noise_of_and_zero_se_margins() -> None:
    assert stats.within_noise_of(0.25, 0.2, 0.03, 2.0)
    assert not stats.within_noise_of(0.27, 0.2, 0.03, 2.0)
    assert stats.within_noise_of(0.1, 0.2, 0.03, 2.0)  # below chance is no learning either
    assert not stats.within_noise_of(0.21, 0.2, math.nan, 2.0)  # unknown SE: no noise
    assert stats.margin_in_se(0.3, 0.3, 0.0, 0.0) == 0.0
    assert stats.margin_in_se(0.3, 0.2, 0.0, 0.0) == math.inf


def test_best_candidate_one_rule_for_dicts_and_store_rows() -> None:
    rows = [
        {"name": "long", "status": "finished", "val_top1": np.float64(0.5), "epochs": np.int64(48)},
        {"name": "short", "status": "finished", "val_top1": 0.5, "epochs": 16},
        {"name": "failed", "status": "failed", "val_top1": 0.9, "epochs": 1},
        {"name": "unscored", "status": "finished", "val_top1": float("nan"), "epochs": 1},
        {"name": "missing", "status": "finished", "epochs": 1},
        {"name": "worse", "status": "finished", "val_top1": 0.4, "epochs": 1},
    ]
    assert stats.best_candidate(rows, "val_top1", "finished")["name"] == "short"  # tie: fewer epochs
    assert stats.best_candidate(rows[:1] + rows[5:], "val_top1", "finished")["name"] == "long"
    assert stats.best_candidate(rows[2:5], "val_top1", "finished") is None
    assert stats.best_candidate([], "val_top1", "finished") is None
