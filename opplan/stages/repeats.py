"""Seeded retrains on the full training set, each scored on the held-out split (docs/design.md §10).

The comparison of OP with HS repeats the final retrain of OP's path and of the
validation-selected HS over ``final.seeds`` seeds: one run each (tagged with its seed),
resumed when killed, reused when finished, with its per-video predictions as an artifact,
so that the report can give a mean, a spread and a paired test over the held-out videos.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from opplan import names as n
from opplan.config import Params, TrainParams
from opplan.planning.graph import State
from opplan.predictions import log_predictions
from opplan.stages.common import FULL_TRAIN, WORK_ROOT
from opplan.stages.scoring import score_model
from opplan.tracking.client import Tracker
from opplan.tracking.lifecycle import Claim, Work, claim_run, log_summary_once
from opplan.train.checkpoint import clear_work_dir
from opplan.train.schedule import ScheduledEpoch, train_schedule
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)


def seeds(params: Params) -> list[int]:
    """``seed``, ``seed + 1``, ... (``final.seeds`` of them); the first is the stage's own model."""
    return [params.seed + i for i in range(params.final.seeds)]


def seeded(params: Params, seed: int) -> Params:
    """``params`` with another training seed (S0's weights and the clip order change with it)."""
    return params.model_copy(update={"seed": seed})


def steps_scale(params: Params, shards: Any) -> float:
    """``final.match_steps``: internal-train over full-train (train + validation) videos, the
    factor on each segment's epochs that keeps a schedule's optimizer steps when it is
    retrained on the full set; 1 when off. The same for OP's path and HS's schedule."""
    if not params.final.match_steps:
        return 1.0
    return TrainSetup(params, shards).train_videos / TrainSetup(params, shards, train_splits=FULL_TRAIN).train_videos


def optimizer_steps(videos: int, schedule: Sequence[ScheduledEpoch], train: TrainParams) -> int:
    """Optimizer steps of ``schedule`` over ``videos`` clips per epoch (the last batch may be short)."""
    return sum(math.ceil(videos / train.batch_for(e.state.clip_length)) for e in schedule)


def retrain_and_score(tracker: Tracker, params: Params, shards: Any, schedule: Sequence[ScheduledEpoch], *,
                      state: State, seed: int, kind: str, name: str, tags: Mapping[str, Any]) -> dict[str, Any]:
    """Train ``schedule`` from S0 with ``seed`` on the full training set and score it as
    ``state`` (the schedule's last state; S0's when the schedule is empty).

    The run is identified by ``kind``, ``tags`` and the seed, and found again by the one
    lifecycle of every stage (:mod:`opplan.tracking.lifecycle`): an ended run is reused, an
    interrupted one resumes from its last epoch state. Returns the run's summary (``run_id``,
    ``seed``, ``status``, held-out metrics, compute).
    """
    key = {n.TAG_KIND: kind, **{k: str(v) for k, v in tags.items()}, n.TAG_SEED: str(seed)}
    work = Work(label=f"{name} seed {seed}", run_name=f"{name} (seed {seed})", key=key, work_root=WORK_ROOT / kind,
                progress_metric=n.M_TRAIN_LOSS)
    claim = claim_run(tracker, work)
    if claim.ended is not None:
        return _summary(claim.run_id, seed, claim.status, claim.ended.data.metrics)
    setup = TrainSetup(seeded(params, seed), shards, train_splits=FULL_TRAIN)
    status, metrics = train_and_score(tracker, claim, setup, schedule, state, label=work.label)
    log.info("%s seed %d: held-out top-1 %s", name, seed, metrics.get(n.M_TOP1))
    return _summary(claim.run_id, seed, status, metrics)


def train_and_score(tracker: Tracker, claim: Claim, setup: TrainSetup, schedule: Sequence[ScheduledEpoch],
                    state: State, *, label: str, val: bool = False) -> tuple[str, dict[str, float]]:
    """Train ``schedule`` in the claimed run (resuming from its epoch states), score the model on
    the held-out split (``val``: also on internal validation), log its per-video predictions and
    its summary once, and end the run. Returns the run's status and summary metrics.

    The one body of every scored schedule: a baseline candidate and a seeded retrain."""
    outcome = train_schedule(setup, list(schedule), claim.work_dir, label=label,
                             on_epoch=tracker.epoch_logger(claim.run_id, n.M_TRAIN_LOSS))
    metrics = {n.M_EPOCHS_TRAINED: len(outcome.losses), n.M_CLIPS_SEEN: len(outcome.losses) * setup.train_videos,
               n.M_COMPUTE_SECONDS: sum(outcome.seconds),
               n.M_STEPS: optimizer_steps(setup.train_videos, schedule, setup.params.train)}
    status = n.STATUS_FAILED
    if outcome.status == n.STATUS_FINISHED:
        scores, _, predictions = score_model(setup, outcome.checkpoint, state, val=val)
        metrics |= scores
        log_predictions(tracker, claim.run_id, predictions)
        status = n.STATUS_FINISHED
    else:
        tracker.set_tags(claim.run_id, {n.TAG_FAILURE: outcome.failure or ""})
    log_summary_once(tracker, claim.run_id, metrics, step=len(outcome.losses))
    tracker.end_run(claim.run_id, status)
    clear_work_dir(claim.work_dir)
    return status, metrics


def _summary(run_id: str, seed: int, status: str, metrics: Mapping[str, float]) -> dict[str, Any]:
    return {"run_id": run_id, "seed": seed, "status": status, "top1": metrics.get(n.M_TOP1),
            "single_view_top1": metrics.get(n.M_SINGLE_VIEW_TOP1),
            "compute_seconds": metrics.get(n.M_COMPUTE_SECONDS, 0.0), "epochs_trained": metrics.get(n.M_EPOCHS_TRAINED, 0)}
