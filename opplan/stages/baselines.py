"""Stage ``baselines``: the hand-tuned grid the paper compares against (SPEC §6).

Clip schedules ``l1->lN``, ``l2->lN``, ``l1->...->lN`` (equal epochs per length) x
learning-rate decay {3-step, cosine} x sampling x total epochs. Each candidate is an
MLflow run in ``<experiment>-baselines`` with its compute (epochs, clips seen, wall
seconds), trained on the internal training split, like a planning transition, and scored
with the planned model's multi-view protocol on the internal validation split (``val_top1``)
and on the held-out split. The sum of the grid's compute is the grid-search cost.

HS is chosen as a user would choose it (issue 12): the best candidate on internal validation,
then retrained on the full training set (internal train + validation) with each of
``final.seeds`` seeds and tested once per seed, as OP's path is. The paper's view, the best
candidate on the held-out split itself (an optimistic order statistic), is kept beside it as
the *oracle* HS (``baselines.json``, the report).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opplan import tracking as t
from opplan.config import Params
from opplan.fileio import atomic_write_json
from opplan.predictions import log_predictions
from opplan.planning.graph import State
from opplan.stages.common import WORK_ROOT, project_lock, require_shards
from opplan.stages.evaluate import score_model
from opplan.stages.plan import config_hash, planning_config
from opplan.stages.repeats import retrain_and_score, seeds
from opplan.train.schedule import ScheduledEpoch, train_schedule
from opplan.train.setup import TrainSetup
from opplan.train.transition import clear_work_dir

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Candidate:
    sampling: str
    schedule: str  # l1-lN | l2-lN | all
    decay: str  # step | cosine
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.sampling}/{self.schedule}/{self.decay}/{self.epochs}"


def candidates(params: Params) -> list[Candidate]:
    b = params.baselines
    lengths = params.plan.clip_lengths
    schedules = [s for s in b.schedules if not (s == "l2-lN" and len(lengths) < 3)]  # l2->lN = l1->lN with 2 lengths
    return [Candidate(s, sch, d, e) for s in b.sampling for sch in dict.fromkeys(schedules) for d in b.decays
            for e in b.epochs]


def clip_lengths_of(schedule: str, lengths: list[int]) -> list[int]:
    if schedule == "l1-lN":
        return [lengths[0], lengths[-1]] if len(lengths) > 1 else lengths
    if schedule == "l2-lN":
        return [lengths[1], lengths[-1]] if len(lengths) > 1 else lengths
    return list(lengths)


def lr_at(epoch: int, total: int, decay: str, lrs: list[float]) -> float:
    """Learning rate of 0-based ``epoch``: the plan's rates in equal parts (3-step for three
    rates), or cosine from the first rate towards 0."""
    if decay == "step":
        return lrs[min(epoch * len(lrs) // total, len(lrs) - 1)]
    return lrs[0] * 0.5 * (1 + math.cos(math.pi * epoch / total))


def build_schedule(c: Candidate, params: Params) -> list[ScheduledEpoch]:
    lengths = clip_lengths_of(c.schedule, params.plan.clip_lengths)
    per_length = [c.epochs // len(lengths) + (i < c.epochs % len(lengths)) for i in range(len(lengths))][::-1]
    epochs: list[ScheduledEpoch] = []
    for segment, (length, count) in enumerate(zip(lengths, per_length)):
        for _ in range(count):
            lr = lr_at(len(epochs), c.epochs, c.decay, params.plan.lrs)
            epochs.append(ScheduledEpoch(State(c.sampling, length, lr), lr, segment))
    return epochs


def run_candidate(tracker: t.Tracker, setup: TrainSetup, c: Candidate, digest: str) -> dict[str, Any]:
    runs = tracker.search({t.TAG_KIND: t.KIND_BASELINE, t.TAG_SCHEDULE: c.name, t.TAG_CONFIG_HASH: digest})
    finished = [r for r in runs if r.data.tags.get(t.TAG_STATUS) in (t.STATUS_FINISHED, t.STATUS_FAILED)]
    if finished:
        run = finished[-1]
        log.info("baseline %s: reusing MLflow run %s", c.name, run.info.run_id)
        return _summary(c, run.info.run_id, run.data.tags[t.TAG_STATUS], run.data.metrics)
    running = [r for r in runs if r.data.tags.get(t.TAG_STATUS) == t.STATUS_RUNNING]
    run_id = running[-1].info.run_id if running else tracker.create_run(f"HS {c.name}", {
        t.TAG_KIND: t.KIND_BASELINE, t.TAG_SCHEDULE: c.name, t.TAG_CONFIG_HASH: digest, t.TAG_SAMPLING: c.sampling,
        t.TAG_CLIP_SCHEDULE: c.schedule, t.TAG_DECAY: c.decay, t.TAG_EPOCHS: c.epochs,
        t.TAG_STATUS: t.STATUS_RUNNING})
    schedule = build_schedule(c, setup.params)
    work = WORK_ROOT / "baselines" / run_id
    outcome = train_schedule(setup, schedule, work, label=f"HS {c.name}",
                             on_epoch=tracker.epoch_logger(run_id, t.M_TRAIN_LOSS))
    metrics = {t.M_EPOCHS_TRAINED: len(outcome.losses), t.M_CLIPS_SEEN: len(outcome.losses) * setup.train_videos,
               t.M_COMPUTE_SECONDS: sum(outcome.seconds)}
    status = t.STATUS_FAILED
    if outcome.status == "finished":
        scores, _, predictions = score_model(setup, outcome.checkpoint, schedule[-1].state, val=True)
        metrics |= scores
        log_predictions(tracker, run_id, predictions)
        status = t.STATUS_FINISHED
    else:
        tracker.set_tags(run_id, {t.TAG_FAILURE: outcome.failure or ""})
    tracker.log_metrics(run_id, metrics, step=len(outcome.losses))
    tracker.end_run(run_id, status)
    clear_work_dir(work)
    return _summary(c, run_id, status, metrics)


def _summary(c: Candidate, run_id: str, status: str, metrics: dict[str, float]) -> dict[str, Any]:
    return {"name": c.name, "sampling": c.sampling, "schedule": c.schedule, "decay": c.decay, "epochs": c.epochs,
            "run_id": run_id, "status": status, "top1": metrics.get(t.M_TOP1), "val_top1": metrics.get(t.M_VAL_TOP1),
            "compute_seconds": metrics.get(t.M_COMPUTE_SECONDS, 0.0),
            "clips_seen": metrics.get(t.M_CLIPS_SEEN, 0), "epochs_trained": metrics.get(t.M_EPOCHS_TRAINED, 0)}


def run_baselines(params: Params, *, out: Path = Path("baselines.json")) -> dict[str, Any]:
    """Train and score the grid; ``baselines.json`` holds every candidate, HS and the grid's cost."""
    if not params.baselines.enabled:
        document = {"enabled": False, "candidates": [], "best": None, "grid": None}
        atomic_write_json(out, document)
        log.info("baselines switched off in params (baselines.enabled: false)")
        return document
    shards = require_shards(params)
    config = planning_config(params, shards) | {"baselines": params.section_dict("baselines")["baselines"]}
    digest = config_hash(config)
    setup = TrainSetup(params, shards)  # internal train: candidates are selected on internal validation
    grid = candidates(params)
    results = []
    with project_lock("baselines"):  # before the store is opened: a second process must not create it too
        tracker = t.Tracker.from_params(params.tracking, suffix="-baselines")
        for i, c in enumerate(grid, start=1):
            log.info("baseline %d/%d: %s", i, len(grid), c.name)
            results.append(run_candidate(tracker, setup, c, digest))
        selected = best_of(results, "val_top1")
        retrains = [] if selected is None else _retrain(tracker, params, shards, grid, selected, digest)
    document = {"enabled": True, "config_hash": digest, "candidates": results, "selected": selected,
                "retrains": retrains, "oracle": best_of(results, "top1"),
                "grid": {"candidates": len(results), "epochs": sum(r["epochs_trained"] for r in results),
                         "clips_seen": sum(r["clips_seen"] for r in results),
                         "compute_seconds": sum(r["compute_seconds"] for r in results)}}
    atomic_write_json(out, document)
    return document


def best_of(results: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The finished candidate with the highest ``key`` (``val_top1``: HS as a user picks it;
    ``top1``: the oracle), ties toward fewer epochs."""
    scored = [r for r in results if r["status"] == t.STATUS_FINISHED and r.get(key) is not None]
    return max(scored, key=lambda r: (r[key], -r["epochs"]), default=None)


def _retrain(tracker: t.Tracker, params: Params, shards: Path, grid: list[Candidate], selected: dict[str, Any],
             digest: str) -> list[dict[str, Any]]:
    """The selected candidate on the full training set, once per seed, each tested once."""
    c = next(c for c in grid if c.name == selected["name"])
    schedule = build_schedule(c, params)
    tags = {t.TAG_SCHEDULE: c.name, t.TAG_CONFIG_HASH: digest}
    return [retrain_and_score(tracker, params, shards, schedule, state=schedule[-1].state, seed=seed,
                              kind=t.KIND_HS_RETRAIN, name=f"HS {c.name}", tags=tags) for seed in seeds(params)]
