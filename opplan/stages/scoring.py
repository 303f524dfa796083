"""Scoring a model on the held-out split, which planning never sees: the one
protocol of ``evaluate`` (the planned model) and ``baselines`` (every candidate).

Ten uniformly spaced clips x three crops per video, softmax scores averaged: top-1,
top-5 and mean class accuracy, plus the single-view figure (centre clip, centre crop,
as in planning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from opplan import distributed
from opplan import names as n
from opplan.planning.graph import State
from opplan.predictions import predictions_json
from opplan.stats import per_video_scores
from opplan.train.loop import accuracy, confusion_matrix, mean_class_accuracy, topk_accuracy
from opplan.train.setup import TrainSetup


@distributed.collective
def score_model(setup: TrainSetup, checkpoint: Path, state: State, *, val: bool = False
                ) -> tuple[dict[str, float], np.ndarray, dict[str, Any]]:
    """Multi-view and single-view scores of a model checkpoint on the held-out split, its
    confusion matrix and its per-video results (:func:`opplan.predictions.predictions_json`).
    ``heldout_plan_signal``: ``plan.metric`` on the held-out split with planning's validation
    protocol (``plan.val_clips`` clips, centre crop), the terms of the planned ``V``.
    ``val``: also the multi-view top-1 on the internal validation split (``val_top1``: how a
    user picks a hand-tuned candidate without looking at the test split).

    Collective: under ``torchrun`` rank 0 loads ``checkpoint`` and every process scores
    its share of the videos.
    """
    model = setup.new_model(state.clip_length)
    distributed.on_main(lambda: setup.load_weights(model, checkpoint))
    distributed.sync_module(model)
    scores, labels = setup.predict(model, "test", state, mode="test")
    single, single_labels = setup.predict(model, "test", state, mode="val")
    extra = {n.M_VAL_TOP1: accuracy(*setup.predict(model, "val", state, mode="test"))} if val else {}
    plan = setup.params.plan  # planning's signal and protocol (plan.metric on plan.val_clips clips): V's own terms
    signal = (single, single_labels) if plan.val_clips == 1 else setup.predict(model, "test", state, mode="val",
                                                                              clips=plan.val_clips)
    extra[n.M_HELDOUT_SIGNAL] = float(per_video_scores(*signal, plan.metric).mean())
    metrics = {
        n.M_TOP1: accuracy(scores, labels),
        n.M_TOP5: topk_accuracy(scores, labels, 5),
        n.M_MEAN_CLASS_ACC: mean_class_accuracy(scores, labels),
        n.M_SINGLE_VIEW_TOP1: accuracy(single, single_labels),
        **extra,
    }
    videos = setup.dataset("test", state, mode="test").paths  # the order predict scores them in
    return metrics, confusion_matrix(scores, labels, setup.num_classes), predictions_json(scores, labels, videos)
