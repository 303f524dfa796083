"""Stage ``final``: retrain from S0 along the planned path (SPEC §5).

The chosen epochs of every transition on the path, on the full training set
(internal train + internal validation), as one MLflow run whose per-epoch metrics
show the whole schedule (clip length, sampling and learning rate per epoch).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from opplan import tracking as t
from opplan.config import Params
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_json, atomic_write_text
from opplan.planning.graph import parse_state
from opplan.stages.common import FULL_TRAIN, WORK_ROOT, final_state, project_lock, require_file, require_shards
from opplan.stages.repeats import optimizer_steps, retrain_and_score, seeds
from opplan.train.schedule import ScheduledEpoch, train_schedule
from opplan.train.setup import TrainSetup
from opplan.train.transition import clear_work_dir

log = logging.getLogger(__name__)



def path_schedule(plan_doc: dict[str, Any], params: Params, scale: float = 1.0) -> list[ScheduledEpoch]:
    """The planned path as one epoch-by-epoch schedule; transitions with t* = 0 add nothing.

    ``scale`` multiplies each segment's epochs (``final.match_steps``: planning videos over
    final videos), rounded to the nearest whole epoch and at least one where t* > 0.
    """
    schedule: list[ScheduledEpoch] = []
    for segment, step in enumerate(plan_doc["transitions"]):
        state = parse_state(step["dst"], params.plan.clip_lengths, params.plan.lrs)
        planned = int(step["chosen_epoch"])
        epochs = max(1, round(planned * scale)) if planned and scale != 1.0 else planned
        schedule += [ScheduledEpoch(state, state.lr, segment)] * epochs
    return schedule


def planned_steps(plan_doc: dict[str, Any], params: Params, planning_videos: int) -> int:
    """Optimizer steps the path's kept epochs took during planning (on internal train only)."""
    planned = path_schedule(plan_doc, params)
    return sum(math.ceil(planning_videos / params.train.batch_for(e.state.clip_length)) for e in planned)


def step_scale(params: Params, shards: Path) -> float:
    """``final.match_steps``: internal-train videos over train + validation videos; else 1."""
    if not params.final.match_steps:
        return 1.0
    return TrainSetup(params, shards).train_videos / TrainSetup(params, shards, train_splits=FULL_TRAIN).train_videos


def run_final(params: Params, *, plan_path: Path = Path("plan.json"), out_dir: Path = Path("final")) -> dict[str, Any]:
    """Retrain along ``plan.json``'s path; write ``final/model.pt`` and ``final/run.json``."""
    shards = require_shards(params)
    plan_doc = json.loads(require_file(plan_path, "plan").read_text())
    schedule = path_schedule(plan_doc, params, step_scale(params, shards))
    if not schedule:
        log.warning("%s: every transition on the chosen path kept its starting model (t* = 0), so the "
                    "final model is S0 itself, untrained", plan_path)
    plan_run = plan_doc["mlflow"]["planning_run_id"]
    digest = plan_doc["config_hash"]
    with project_lock("final"):  # before the store is opened: a second process must not create it too
        tracker = t.Tracker.from_params(params.tracking)
        runs = [r for r in tracker.search({t.TAG_KIND: t.KIND_FINAL, t.TAG_PLAN_RUN: plan_run})
                if r.data.tags.get(t.TAG_STATUS) != t.STATUS_KILLED]
        finished = [r for r in runs if r.data.tags.get(t.TAG_STATUS) == t.STATUS_FINISHED]
        run_id = (finished or runs)[-1].info.run_id if runs else None
        if finished and (out_dir / "model.pt").is_file() and (out_dir / "run.json").is_file():
            log.info("final model of planning %s already trained (MLflow run %s)", digest, run_id)
            clear_work_dir(WORK_ROOT / "final" / run_id)  # killed after the run ended, before this
            return json.loads((out_dir / "run.json").read_text())
        if (run_id is not None and not finished and not any((WORK_ROOT / "final" / run_id).glob("epoch_*.pt"))
                and tracker.history(run_id, t.M_TRAIN_LOSS)):
            log.warning("final MLflow run %s was interrupted and its work folder is gone; marking it killed and "
                        "training again in a new run", run_id)
            tracker.end_run(run_id, t.STATUS_KILLED)
            run_id = None
        if run_id is None or finished:  # a finished run whose outputs are gone is retrained in a new one
            path_names = " → ".join(plan_doc["path"])
            run_id = tracker.create_run(f"final: {path_names}", {
                t.TAG_KIND: t.KIND_FINAL, t.TAG_PLAN_RUN: plan_run, t.TAG_CONFIG_HASH: digest,
                t.TAG_STATUS: t.STATUS_RUNNING})
            tracker.log_params(run_id, {"path": path_names, "epochs": len(schedule)})
        setup = TrainSetup(params, shards, train_splits=FULL_TRAIN)
        work = WORK_ROOT / "final" / run_id
        outcome = train_schedule(setup, schedule, work, label="final",
                                 on_epoch=tracker.epoch_logger(run_id, t.M_TRAIN_LOSS))
        if outcome.status != "finished":
            tracker.set_tags(run_id, {t.TAG_FAILURE: outcome.failure or ""})
            tracker.end_run(run_id, t.STATUS_FAILED)
            raise OpplanError(f"final training along the planned path diverged: {outcome.failure}")
        summary = {t.M_EPOCHS_TRAINED: len(schedule), t.M_CLIPS_SEEN: len(schedule) * setup.train_videos,
                   t.M_COMPUTE_SECONDS: sum(outcome.seconds), t.M_STEPS: optimizer_steps(setup, schedule),
                   t.M_PLANNED_STEPS: planned_steps(plan_doc, params, TrainSetup(params, shards).train_videos)}
        if t.M_EPOCHS_TRAINED not in tracker.get_run(run_id).data.metrics:  # not yet, or killed after
            tracker.log_metrics(run_id, summary, step=len(schedule))
        tracker.log_artifact(run_id, outcome.checkpoint, t.ARTIFACT_CHECKPOINT_DIR)
        out_dir.mkdir(parents=True, exist_ok=True)
        outcome.checkpoint.replace(out_dir / "model.pt")
        record = {"run_id": run_id, "config_hash": digest, "planning_run_id": plan_run,
                  "final_state": plan_doc["final_state"], "epochs": len(schedule), **summary,
                  "schedule": [{"epoch": i + 1, "state": e.state.name, "lr": e.lr} for i, e in enumerate(schedule)],
                  "losses": outcome.losses}
        atomic_write_json(out_dir / "run.json", record)
        rows = ["epoch,state,clip_length,sampling,lr,train_loss"] + [
            f"{i + 1},{e.state.name},{e.state.clip_length},{e.state.sampling},{e.lr:g},{loss:.6f}"
            for i, (e, loss) in enumerate(zip(schedule, outcome.losses))]
        atomic_write_text(out_dir / "schedule.csv", "\n".join(rows) + "\n")
        tracker.end_run(run_id, t.STATUS_FINISHED)
        clear_work_dir(work)
        record["seeds"] = _further_seeds(tracker, params, shards, schedule, plan_doc)
        atomic_write_json(out_dir / "run.json", record)
    return record


def _further_seeds(tracker: t.Tracker, params: Params, shards: Path, schedule: list[ScheduledEpoch],
                   plan_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``final.seeds`` > 1: the path retrained and scored with each further seed (issue 12)."""
    state = final_state(plan_doc, params)
    tags = {t.TAG_PLAN_RUN: plan_doc["mlflow"]["planning_run_id"], t.TAG_CONFIG_HASH: plan_doc["config_hash"]}
    return [retrain_and_score(tracker, params, shards, schedule, state=state, seed=seed, kind=t.KIND_OP_RETRAIN,
                              name="OP", tags=tags) for seed in seeds(params)[1:]]
