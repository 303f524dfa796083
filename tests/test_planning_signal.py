"""Planning's validation signal (docs/design.md §10): several clips per video, the metric and its SE."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from opplan.config import Params, TrainParams
from opplan.data.dataset import ClipDataset
from opplan.planning.graph import State
from opplan.stats import mean_se


def test_val_clips_are_uniformly_spaced_and_include_the_centre_clip(tiny_shards: Path) -> None:
    train = TrainParams(crop_size=32, scale_jitter=[32, 40], eval_short_side=36)
    one = ClipDataset(tiny_shards, "val", sampling="cs", clip_length=4, mode="val", train=train)
    three = ClipDataset(tiny_shards, "val", sampling="cs", clip_length=4, mode="val", train=train, clips=3)
    clip, label = one[0]
    views, label3 = three[0]
    assert clip.shape == (3, 4, 32, 32) and views.shape == (3, 3, 4, 32, 32) and label == label3
    torch.testing.assert_close(views[1], clip)  # with 3 clips, the middle one is the centre clip
    assert not torch.equal(views[0], views[2])


class FakeSetup:
    """What ``validate`` uses of a TrainSetup: params and ``predict``."""

    def __init__(self, metric: str, clips: int, scores: np.ndarray, labels: np.ndarray) -> None:
        self.params = SimpleNamespace(plan=SimpleNamespace(metric=metric, val_clips=clips))
        self.scores, self.labels, self.calls = scores, labels, []

    def predict(self, model, split, state, *, mode, clips=1):
        self.calls.append((split, mode, clips))
        return self.scores, self.labels


@pytest.mark.parametrize("metric", ["top1", "top135", "prob"])
def test_validate_is_the_mean_of_the_metric_with_its_se(metric: str) -> None:
    from opplan.stats import per_video_scores
    from opplan.train.transition import validate

    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(6), size=40)
    labels = rng.integers(0, 6, size=40)
    setup = FakeSetup(metric, 4, scores, labels)
    value, se = validate(setup, None, State("cs", 8, 0.1))
    per_video = per_video_scores(scores, labels, metric)
    assert value == pytest.approx(per_video.mean()) and se == pytest.approx(mean_se(per_video))
    assert setup.calls == [("val", "val", 4)]
    if metric == "top1":
        assert se == pytest.approx(math.sqrt(value * (1 - value) / 39))


def test_the_planning_signal_keys_are_validated() -> None:
    plan = Params.model_validate({}).plan
    assert (plan.metric, plan.val_clips, plan.decision, plan.tie_se, plan.keep_start_se) == \
        ("top1", 1, "argmax", 1.0, 1.0)
    for bad in ({"metric": "top5"}, {"val_clips": 0}, {"decision": "lcb"}, {"tie_se": -1}, {"keep_start_se": -0.5}):
        with pytest.raises(Exception):
            Params.model_validate({"plan": bad})
    assert Params.model_validate({"plan": {"keep_start_se": None}}).plan.keep_start_se is None


@pytest.mark.parametrize(("t_star", "epoch", "words"), [
    (None, 3, "knee: not enough evidence yet"),
    (999, 8, "knee: none yet (the fit still rises)"),
    (17, 6, "knee: ahead (the fit peaks at epoch 17)"),
    (4, 6, "knee t*=4"),
    (6, 6, "knee t*=6"),
])
def test_an_epochs_log_line_names_a_knee_only_within_the_epochs_seen(t_star, epoch, words) -> None:
    from opplan.train.transition import knee_words

    assert knee_words(t_star, epoch, horizon=999) == words
