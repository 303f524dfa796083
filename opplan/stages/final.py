"""Stage ``final``: retrain from S0 along the planned path.

The chosen epochs of every transition on the path, on the full training set
(internal train + internal validation), as one MLflow run whose per-epoch metrics
show the whole schedule (clip length, sampling and learning rate per epoch). Which run
is used (reuse, resume, kill, create) follows :mod:`opplan.tracking.lifecycle`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from opplan import names as n
from opplan.config import Params
from opplan.documents import FinalRecord, PlanDocument
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_text, file_digest
from opplan.planning.graph import parse_state
from opplan.stages.common import (
    FINAL_RECORD,
    FULL_TRAIN,
    WORK_ROOT,
    final_state,
    project_lock,
    require_current,
    require_shards,
)
from opplan.stages.repeats import optimizer_steps, retrain_and_score, seeds, steps_scale
from opplan.tracking.client import Tracker
from opplan.tracking.lifecycle import Claim, Work, claim_run, log_summary_once
from opplan.train.checkpoint import MODEL_FILE, clear_work_dir
from opplan.train.schedule import ScheduledEpoch, train_schedule
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)

def path_schedule(plan: PlanDocument, params: Params, scale: float = 1.0) -> list[ScheduledEpoch]:
    """The planned path as one epoch-by-epoch schedule; transitions with t* = 0 add nothing.

    ``scale`` multiplies each segment's epochs (``final.match_steps``: planning videos over
    final videos), rounded to the nearest whole epoch and at least one where t* > 0.
    """
    schedule: list[ScheduledEpoch] = []
    for segment, step in enumerate(plan.transitions):
        state = parse_state(step.dst, params.plan.clip_lengths, params.plan.lrs)
        planned = step.epochs
        epochs = max(1, round(planned * scale)) if planned and scale != 1.0 else planned
        schedule += [ScheduledEpoch(state, state.lr, segment)] * epochs
    return schedule


def planned_steps(plan: PlanDocument, params: Params, planning_videos: int) -> int:
    """Optimizer steps the path's kept epochs took during planning (on internal train only)."""
    return optimizer_steps(planning_videos, path_schedule(plan, params), params.train)


def final_work(plan: PlanDocument, params: Params) -> Work:
    """The final run of a planning, one per ``final.match_steps`` (the schedules differ)."""
    return Work(label="final", run_name=f"final: {' → '.join(plan.path)}",
                key={n.TAG_KIND: n.KIND_FINAL, n.TAG_PLAN_RUN: plan.planning_run_id,
                     n.TAG_MATCH_STEPS: str(params.final.match_steps)},
                tags={n.TAG_CONFIG_HASH: plan.config_hash},
                work_root=WORK_ROOT / "final", progress_metric=n.M_TRAIN_LOSS)


def read_record(out_dir: Path) -> FinalRecord | None:
    """``final/run.json`` when it is a valid record and the model it names is there, else ``None``."""
    model = out_dir / MODEL_FILE
    try:
        record = FinalRecord.read(out_dir / FINAL_RECORD)
    except OpplanError:
        return None
    return record if model.is_file() and record.model_sha256 == file_digest(model) else None


def run_final(params: Params, *, plan_path: Path = Path("plan.json"), out_dir: Path = Path("final")) -> FinalRecord:
    """Retrain along ``plan.json``'s path; write ``final/model.pt`` and ``final/run.json``."""
    shards = require_shards(params)
    plan_doc = PlanDocument.read(plan_path)
    require_current(plan_doc, plan_path, params, shards)
    planning_videos = TrainSetup(params, shards).train_videos
    setup = TrainSetup(params, shards, train_splits=FULL_TRAIN)
    # final.match_steps: a planned epoch on internal train is this fraction of an epoch on train + val
    schedule = path_schedule(plan_doc, params, steps_scale(params, shards))
    if not schedule:
        log.warning("%s: every transition on the chosen path kept its starting model (t* = 0), so the "
                    "final model is S0 itself, untrained", plan_path)
    with project_lock("final"):  # before the store is opened: a second process must not create it too
        tracker = Tracker.from_params(params.tracking)
        claim = claim_run(tracker, final_work(plan_doc, params))
        if claim.status == n.STATUS_FAILED:
            raise OpplanError(f"final training along the planned path diverged (MLflow run {claim.run_id}): "
                              f"{claim.ended.data.tags.get(n.TAG_FAILURE, '')}")
        if claim.ended is not None:
            existing = read_record(out_dir)
            if existing is not None and existing.run_id == claim.run_id and existing.seeds is not None:
                return existing
            record = restore_outputs(tracker, claim, plan_doc, schedule, out_dir)
            return _with_further_seeds(tracker, params, shards, schedule, plan_doc, record, out_dir)
        tracker.log_params(claim.run_id, {"path": " → ".join(plan_doc.path), "epochs": len(schedule)})
        outcome = train_schedule(setup, schedule, claim.work_dir, label="final",
                                 on_epoch=tracker.epoch_logger(claim.run_id, n.M_TRAIN_LOSS))
        if outcome.status != n.STATUS_FINISHED:
            tracker.set_tags(claim.run_id, {n.TAG_FAILURE: outcome.failure or ""})
            tracker.end_run(claim.run_id, n.STATUS_FAILED)
            raise OpplanError(f"final training along the planned path diverged: {outcome.failure}")
        summary = {n.M_EPOCHS_TRAINED: len(schedule), n.M_CLIPS_SEEN: len(schedule) * setup.train_videos,
                   n.M_COMPUTE_SECONDS: sum(outcome.seconds),
                   n.M_STEPS: optimizer_steps(setup.train_videos, schedule, params.train),
                   n.M_PLANNED_STEPS: planned_steps(plan_doc, params, planning_videos)}
        log_summary_once(tracker, claim.run_id, summary, step=len(schedule))
        tracker.log_checkpoint(claim.run_id, outcome.checkpoint)
        record = final_record(claim.run_id, plan_doc, schedule, summary, outcome.losses, outcome.checkpoint)
        write_outputs(out_dir, outcome.checkpoint, record, schedule)
        tracker.end_run(claim.run_id, n.STATUS_FINISHED)
        clear_work_dir(claim.work_dir)
        return _with_further_seeds(tracker, params, shards, schedule, plan_doc, record, out_dir)


def _with_further_seeds(tracker: Tracker, params: Params, shards: Path, schedule: list[ScheduledEpoch],
                        plan_doc: PlanDocument, record: FinalRecord, out_dir: Path) -> FinalRecord:
    """``final.seeds`` > 1: the path retrained and scored with each further seed (one run per
    seed, found again by the same lifecycle rules), listed in ``run.json``."""
    state = final_state(plan_doc, params)
    tags = {n.TAG_PLAN_RUN: plan_doc.planning_run_id, n.TAG_CONFIG_HASH: plan_doc.config_hash,
            n.TAG_MATCH_STEPS: str(params.final.match_steps)}
    further = [retrain_and_score(tracker, params, shards, schedule, state=state, seed=seed, kind=n.KIND_OP_RETRAIN,
                                 name="OP", tags=tags) for seed in seeds(params)[1:]]
    record = FinalRecord.new({**record.to_json(), "seeds": further})
    record.write(out_dir / FINAL_RECORD)
    return record


def restore_outputs(tracker: Tracker, claim: Claim, plan_doc: PlanDocument, schedule: list[ScheduledEpoch],
                    out_dir: Path) -> FinalRecord:
    """The files of a finished run that are gone (``dvc repro`` removes a stage's outputs before
    it runs the stage again), made again from MLflow: the model from the run's artifact, the
    record from its metrics. Nothing is trained again."""
    metrics = claim.ended.data.metrics
    summary = {n.M_EPOCHS_TRAINED: int(metrics[n.M_EPOCHS_TRAINED]), n.M_CLIPS_SEEN: int(metrics[n.M_CLIPS_SEEN]),
               n.M_COMPUTE_SECONDS: metrics[n.M_COMPUTE_SECONDS]}
    summary |= {key: int(metrics[key]) for key in (n.M_STEPS, n.M_PLANNED_STEPS) if key in metrics}
    losses = [value for _, value in tracker.history(claim.run_id, n.M_TRAIN_LOSS)]
    checkpoint = tracker.download_checkpoint(claim.run_id, claim.work_dir)
    record = final_record(claim.run_id, plan_doc, schedule, summary, losses, checkpoint)
    write_outputs(out_dir, checkpoint, record, schedule)
    clear_work_dir(claim.work_dir)
    log.info("final: wrote %s again from finished MLflow run %s", out_dir, claim.run_id)
    return record


def final_record(run_id: str, plan_doc: PlanDocument, schedule: list[ScheduledEpoch], summary: dict[str, Any],
                 losses: list[float], checkpoint: Path) -> FinalRecord:
    """What ``final/run.json`` holds about the final model of ``run_id``."""
    return FinalRecord.new({
        "run_id": run_id, "config_hash": plan_doc.config_hash, "planning_run_id": plan_doc.planning_run_id,
        "final_state": plan_doc.final_state, "epochs": len(schedule), **summary,
        "schedule": [{"epoch": i + 1, "state": e.state.name, "lr": e.lr} for i, e in enumerate(schedule)],
        "losses": losses, "model_sha256": file_digest(checkpoint)})


def write_outputs(out_dir: Path, checkpoint: Path, record: FinalRecord, schedule: list[ScheduledEpoch]) -> None:
    """``model.pt`` and ``run.json`` so that a reader never pairs one run's model with another's
    record: the old record goes first, the new one last, and it names the model's digest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FINAL_RECORD).unlink(missing_ok=True)
    checkpoint.replace(out_dir / MODEL_FILE)
    record.write(out_dir / FINAL_RECORD)
    rows = ["epoch,state,clip_length,sampling,lr,train_loss"] + [
        f"{i + 1},{e.state.name},{e.state.clip_length},{e.state.sampling},{e.lr:g},{loss:.6f}"
        for i, (e, loss) in enumerate(zip(schedule, record.losses))]
    atomic_write_text(out_dir / "schedule.csv", "\n".join(rows) + "\n")
