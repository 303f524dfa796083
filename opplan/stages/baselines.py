"""Stage ``baselines``: the hand-tuned grid the paper compares against (docs/design.md §6).

Clip schedules ``l1->lN``, ``l2->lN``, ``l1->...->lN`` (equal epochs per length) x
learning-rate decay {3-step, cosine} x sampling x total epochs. Each candidate is an
MLflow run in ``<experiment>-baselines`` with its compute (epochs, clips seen, wall
seconds), trained on the internal training split, like a planning transition, and scored
with the planned model's multi-view protocol on the internal validation split (``val_top1``)
and on the held-out split. The sum of the grid's compute is the grid-search cost. Which
run a candidate uses (reuse, resume, kill, create) follows :mod:`opplan.tracking.lifecycle`.

HS is chosen as a user would choose it (docs/design.md §10): the best candidate on internal
validation, then retrained on the full training set (internal train + validation) with each
of ``final.seeds`` seeds and tested once per seed, as OP's path is. The paper's view, the
best candidate on the held-out split itself (an optimistic order statistic), is kept beside
it as the *oracle* HS (``baselines.json``, the report).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opplan import names as n
from opplan.config import Params
from opplan.documents import BaselinesDocument
from opplan.planning.graph import State
from opplan.stages.common import WORK_ROOT, config_hash, project_lock, require_shards, stage_config
from opplan.stages.repeats import retrain_and_score, seeds, steps_scale, train_and_score
from opplan.stages.workers import map_with_workers, worker_devices
from opplan.stats import best_candidate
from opplan.tracking.client import Tracker
from opplan.tracking.lifecycle import Work, claim_run
from opplan.train.schedule import ScheduledEpoch
from opplan.train.setup import TrainSetup

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
    """The grid: sampling x clip schedule x decay x epochs. Schedules that give the same clip
    lengths are one candidate, under the first name listed: with two lengths ``l1-lN`` and
    ``all`` are both ``l1 -> l2``, while ``l2-lN`` is ``l2`` throughout."""
    b = params.baselines
    lengths = params.plan.clip_lengths
    distinct: dict[tuple[int, ...], str] = {}
    for schedule in b.schedules:
        distinct.setdefault(tuple(clip_lengths_of(schedule, lengths)), schedule)
    return [Candidate(s, sch, d, e) for s in b.sampling for sch in distinct.values() for d in b.decays
            for e in b.epochs]


def clip_lengths_of(schedule: str, lengths: list[int]) -> list[int]:
    """The clip lengths a schedule trains at, in order, each once."""
    if schedule == "l1-lN":
        chosen = [lengths[0], lengths[-1]]
    elif schedule == "l2-lN":
        chosen = [lengths[min(1, len(lengths) - 1)], lengths[-1]]
    else:
        chosen = list(lengths)
    return list(dict.fromkeys(chosen))


def lr_at(epoch: int, total: int, decay: str, lrs: list[float]) -> float:
    """Learning rate of 0-based ``epoch``: the plan's rates in equal parts (3-step for three
    rates), or cosine from the first rate towards 0."""
    if decay == "step":
        return lrs[min(epoch * len(lrs) // total, len(lrs) - 1)]
    return lrs[0] * 0.5 * (1 + math.cos(math.pi * epoch / total))


def build_schedule(c: Candidate, params: Params, scale: float = 1.0) -> list[ScheduledEpoch]:
    """The candidate's epochs: its total split evenly over its clip lengths (the longest first
    get the remainder), the rate by its decay over the whole schedule. ``scale``
    (``final.match_steps`` on the full training set, as :func:`opplan.stages.final.path_schedule`
    scales OP's path) multiplies each clip length's epochs, rounded, at least one; the decay
    then runs over the scaled total."""
    lengths = clip_lengths_of(c.schedule, params.plan.clip_lengths)
    per_length = [c.epochs // len(lengths) + (i < c.epochs % len(lengths)) for i in range(len(lengths))][::-1]
    if scale != 1.0:
        per_length = [max(1, round(k * scale)) if k else 0 for k in per_length]
    total = sum(per_length)
    epochs: list[ScheduledEpoch] = []
    for segment, (length, count) in enumerate(zip(lengths, per_length)):
        for _ in range(count):
            lr = lr_at(len(epochs), total, c.decay, params.plan.lrs)
            epochs.append(ScheduledEpoch(State(c.sampling, length, lr), lr, segment))
    return epochs


def candidate_work(c: Candidate, digest: str) -> Work:
    return Work(label=f"baseline {c.name}", run_name=f"HS {c.name}",
                key={n.TAG_KIND: n.KIND_BASELINE, n.TAG_SCHEDULE: c.name, n.TAG_CONFIG_HASH: digest},
                tags={n.TAG_SAMPLING: c.sampling, n.TAG_CLIP_SCHEDULE: c.schedule, n.TAG_DECAY: c.decay,
                      n.TAG_EPOCHS: c.epochs},
                work_root=WORK_ROOT / "baselines", progress_metric=n.M_TRAIN_LOSS)


def run_candidate(tracker: Tracker, setup: TrainSetup, c: Candidate, digest: str) -> dict[str, Any]:
    claim = claim_run(tracker, candidate_work(c, digest))
    if claim.ended is not None:
        return _summary(c, claim.run_id, claim.status, claim.ended.data.metrics)
    schedule = build_schedule(c, setup.params)
    status, _ = train_and_score(tracker, claim, setup, schedule, schedule[-1].state, label=f"HS {c.name}", val=True)
    return _summary(c, claim.run_id, status, tracker.get_run(claim.run_id).data.metrics)


def _candidate_in_worker(setup: TrainSetup, item: tuple[int, int, Candidate, str]) -> dict[str, Any]:
    """One candidate in a worker process (:func:`opplan.stages.workers.map_with_workers`)."""
    i, total, c, digest = item
    log.info("baseline %d/%d: %s", i, total, c.name)
    return run_candidate(Tracker.from_params(setup.params.tracking, baselines=True), setup, c, digest)


def _summary(c: Candidate, run_id: str, status: str, metrics: dict[str, float]) -> dict[str, Any]:
    return {"name": c.name, "sampling": c.sampling, "schedule": c.schedule, "decay": c.decay, "epochs": c.epochs,
            "run_id": run_id, "status": status, "top1": metrics.get(n.M_TOP1), "val_top1": metrics.get(n.M_VAL_TOP1),
            "compute_seconds": metrics.get(n.M_COMPUTE_SECONDS, 0.0),
            "clips_seen": metrics.get(n.M_CLIPS_SEEN, 0), "epochs_trained": metrics.get(n.M_EPOCHS_TRAINED, 0)}


def run_baselines(params: Params, *, out: Path = Path("baselines.json")) -> BaselinesDocument:
    """Train and score the grid; ``baselines.json`` holds every candidate, HS and the grid's cost."""
    if not params.baselines.enabled:
        document = BaselinesDocument.new({"enabled": False, "candidates": [], "selected": None, "retrains": [],
                                          "oracle": None, "grid": None})
        document.write(out)
        log.info("baselines switched off in params (baselines.enabled: false)")
        return document
    shards = require_shards(params)
    config = stage_config(params, "baselines", shards)  # what dvc.yaml reruns baselines for
    digest = config_hash(config)
    setup = TrainSetup(params, shards)  # internal train: candidates are selected on internal validation
    grid = candidates(params)
    results = []
    with project_lock("baselines"):  # before the store is opened: a second process must not create it too
        tracker = Tracker.from_params(params.tracking, baselines=True)
        workers = min(params.plan.workers, len(grid))
        if workers > 1:  # as planning's transitions: one candidate at a time per worker (runtime.plan_workers)
            log.info("baselines: %d candidates, %d at a time", len(grid), workers)
            results = map_with_workers(params, worker_devices(params, workers), shards, _candidate_in_worker,
                                       [(i, len(grid), c, digest) for i, c in enumerate(grid, start=1)])
        else:
            for i, c in enumerate(grid, start=1):
                log.info("baseline %d/%d: %s", i, len(grid), c.name)
                results.append(run_candidate(tracker, setup, c, digest))
        selected = best_of(results, "val_top1")
        retrains = [] if selected is None else _retrain(tracker, params, shards, grid, selected, digest)
    document = BaselinesDocument.new({
        "enabled": True, "config_hash": digest, "candidates": results, "selected": selected, "retrains": retrains,
        "oracle": best_of(results, "top1"),
        "grid": {"candidates": len(results), "epochs": sum(r["epochs_trained"] for r in results),
                 "clips_seen": sum(r["clips_seen"] for r in results),
                 "compute_seconds": sum(r["compute_seconds"] for r in results)}})
    document.write(out)
    return document


def best_of(results: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The finished candidate with the highest ``key`` (``val_top1``: HS as a user picks it;
    ``top1``: the oracle), ties toward fewer epochs."""
    return best_candidate(results, key, n.STATUS_FINISHED)


def _retrain(tracker: Tracker, params: Params, shards: Path, grid: list[Candidate], selected: dict[str, Any],
             digest: str) -> list[dict[str, Any]]:
    """The selected candidate on the full training set, once per seed, each tested once.

    With ``final.match_steps`` each clip length's epochs are scaled as OP's path is in the
    final stage (internal-train over full-train videos), so both retrains keep the optimizer
    steps their schedule had when it was chosen; those runs are tagged so (runs without the
    tag are the unscaled ones, as before the option applied to HS)."""
    c = next(c for c in grid if c.name == selected["name"])
    tags = {n.TAG_SCHEDULE: c.name, n.TAG_CONFIG_HASH: digest}
    if params.final.match_steps:
        tags[n.TAG_MATCH_STEPS] = str(True)
    schedule = build_schedule(c, params, steps_scale(params, shards))
    return [retrain_and_score(tracker, params, shards, schedule, state=schedule[-1].state, seed=seed,
                              kind=n.KIND_HS_RETRAIN, name=f"HS {c.name}", tags=tags) for seed in seeds(params)]
