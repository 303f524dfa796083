"""Seeded retrains on the full training set, each scored on the held-out split (issue 12).

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

from opplan import tracking as t
from opplan.config import Params
from opplan.planning.graph import State
from opplan.predictions import log_predictions
from opplan.stages.common import FULL_TRAIN, WORK_ROOT
from opplan.stages.evaluate import score_model
from opplan.train.schedule import ScheduledEpoch, train_schedule
from opplan.train.setup import TrainSetup
from opplan.train.transition import clear_work_dir

log = logging.getLogger(__name__)


def seeds(params: Params) -> list[int]:
    """``seed``, ``seed + 1``, ... (``final.seeds`` of them); the first is the stage's own model."""
    return [params.seed + i for i in range(params.final.seeds)]


def seeded(params: Params, seed: int) -> Params:
    """``params`` with another training seed (S0's weights and the clip order change with it)."""
    return params.model_copy(update={"seed": seed})


def optimizer_steps(setup: TrainSetup, schedule: Sequence[ScheduledEpoch]) -> int:
    """Optimizer steps of ``schedule`` on ``setup``'s training splits (the last batch may be short)."""
    batch = setup.params.train.batch_for
    return sum(math.ceil(setup.train_videos / batch(e.state.clip_length)) for e in schedule)


def retrain_and_score(tracker: t.Tracker, params: Params, shards: Any, schedule: Sequence[ScheduledEpoch], *,
                      state: State, seed: int, kind: str, name: str, tags: Mapping[str, Any]) -> dict[str, Any]:
    """Train ``schedule`` from S0 with ``seed`` on the full training set and score it as
    ``state`` (the schedule's last state; S0's when the schedule is empty).

    The run is found again by ``kind``, ``tags`` and the seed: a finished one is reused,
    an unfinished one resumes from its last epoch state. Returns the run's summary
    (``run_id``, ``seed``, ``status``, held-out metrics, compute).
    """
    keys = {t.TAG_KIND: kind, **{k: str(v) for k, v in tags.items()}, t.TAG_SEED: str(seed)}
    runs = tracker.search(keys)
    done = [r for r in runs if r.data.tags.get(t.TAG_STATUS) in (t.STATUS_FINISHED, t.STATUS_FAILED)]
    if done:
        run = done[-1]
        log.info("%s seed %d: reusing MLflow run %s", name, seed, run.info.run_id)
        return _summary(run.info.run_id, seed, run.data.tags[t.TAG_STATUS], run.data.metrics)
    running = [r for r in runs if r.data.tags.get(t.TAG_STATUS) == t.STATUS_RUNNING]
    run_id = running[-1].info.run_id if running else tracker.create_run(
        f"{name} (seed {seed})", {**keys, t.TAG_STATUS: t.STATUS_RUNNING})
    setup = TrainSetup(seeded(params, seed), shards, train_splits=FULL_TRAIN)
    work = WORK_ROOT / kind / run_id
    outcome = train_schedule(setup, schedule, work, label=f"{name} seed {seed}",
                             on_epoch=tracker.epoch_logger(run_id, t.M_TRAIN_LOSS))
    metrics = {t.M_EPOCHS_TRAINED: len(outcome.losses), t.M_CLIPS_SEEN: len(outcome.losses) * setup.train_videos,
               t.M_COMPUTE_SECONDS: sum(outcome.seconds), t.M_STEPS: optimizer_steps(setup, schedule)}
    status = t.STATUS_FAILED
    if outcome.status == "finished":
        scores, _, predictions = score_model(setup, outcome.checkpoint, state)
        metrics |= scores
        log_predictions(tracker, run_id, predictions)
        status = t.STATUS_FINISHED
    else:
        tracker.set_tags(run_id, {t.TAG_FAILURE: outcome.failure or ""})
    tracker.log_metrics(run_id, metrics, step=len(outcome.losses))
    tracker.end_run(run_id, status)
    clear_work_dir(work)
    log.info("%s seed %d: held-out top-1 %s", name, seed, metrics.get(t.M_TOP1))
    return _summary(run_id, seed, status, metrics)


def _summary(run_id: str, seed: int, status: str, metrics: Mapping[str, float]) -> dict[str, Any]:
    return {"run_id": run_id, "seed": seed, "status": status, "top1": metrics.get(t.M_TOP1),
            "single_view_top1": metrics.get(t.M_SINGLE_VIEW_TOP1),
            "compute_seconds": metrics.get(t.M_COMPUTE_SECONDS, 0.0), "epochs_trained": metrics.get(t.M_EPOCHS_TRAINED, 0)}
