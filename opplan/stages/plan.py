"""Stage ``plan``: explore the transition graph, every transition an MLflow nested run
(:mod:`opplan.stages.transitions`), and choose the path by dynamic programming over the
scores read back from MLflow (:mod:`opplan.planning.dp`, pure).

With ``plan.workers: K > 1`` the transitions that are ready at the same time train in K
worker processes (:mod:`opplan.stages.workers`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from opplan import distributed
from opplan.config import Params
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_json, atomic_write_text
from opplan.planning.dp import PlanResult, plan_path
from opplan.planning.drawing import draw_graph
from opplan.planning.graph import graph_from_params
from opplan.stages.common import WORK_ROOT, config_hash, planning_config, project_lock, require_shards
from opplan.stages.transitions import TransitionRunner
from opplan.stages.workers import plan_with_workers, worker_devices
from opplan.tracking import names as n
from opplan.tracking.client import Tracker, flatten
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)


def find_or_start_planning(tracker: Tracker, config: dict[str, Any], digest: str) -> str:
    """The planning run of this configuration: one per configuration, reused by every rerun
    (its transitions are found under it by :mod:`opplan.tracking.lifecycle`)."""
    runs = tracker.search({n.TAG_KIND: n.KIND_PLANNING, n.TAG_CONFIG_HASH: digest})
    if runs:
        run_id = runs[-1].info.run_id
    else:
        run_id = tracker.create_run(f"plan {digest[:8]}", {n.TAG_KIND: n.KIND_PLANNING, n.TAG_CONFIG_HASH: digest,
                                                          n.TAG_MANIFEST_HASH: config["manifest_hash"],
                                                          n.TAG_STATUS: n.STATUS_RUNNING})
    # always: a kill may have come between creating the run and logging (all of) them
    tracker.log_params(run_id, {**flatten("", config), "config_hash": digest})
    return run_id


def write_curves(tracker: Tracker, result: PlanResult, folder: Path) -> None:
    """One ``epoch,val_acc`` CSV per explored transition, read back from MLflow (DVC plots)."""
    if folder.exists():
        shutil.rmtree(folder)
    for record in result.records:
        if record.run_id is None:
            continue
        rows = ["epoch,val_acc"] + [f"{step},{value:.6f}" for step, value in tracker.history(record.run_id, n.M_VAL_ACC)]
        name = f"{record.src}__{record.dst}".replace("/", "-")
        atomic_write_text(folder / f"{name}.csv", "\n".join(rows) + "\n")


def run_plan(params: Params, *, out_json: Path = Path("plan.json"), out_png: Path = Path("plan.png"),
             out_metrics: Path = Path("plan_metrics.json"), out_curves: Path = Path("plots/transitions")) -> PlanResult:
    """Plan the schedule for ``params``; write ``plan.json`` and the explored-graph PNG."""
    if params.plan.workers > 1 and distributed.world().enabled:
        raise OpplanError(f"plan.workers is {params.plan.workers}, but this plan runs as {distributed.world().size} "
                          "distributed processes: use either planning workers or distributed training, not both")
    shards = require_shards(params)
    graph = graph_from_params(params.plan)
    config = planning_config(params, shards)
    digest = config_hash(config)
    devices = worker_devices(params, params.plan.workers) if params.plan.workers > 1 else []  # fail early
    with project_lock("plan"):  # before the store is opened: a second process must not create it too
        tracker = Tracker.from_params(params.tracking)
        parent = find_or_start_planning(tracker, config, digest)
        log.info("planning %s (MLflow run %s in %s), %d states, %d edges", digest, parent, tracker.uri,
                 len(graph.states), len(graph.edges))
        try:
            if params.plan.workers == 1:
                runner = TransitionRunner(tracker, parent, TrainSetup(params, shards), WORK_ROOT / digest)
                result = plan_path(graph, runner)
            else:
                result = plan_with_workers(params, devices, shards, graph, tracker.uri, parent, WORK_ROOT / digest)
        except OpplanError:
            # The error may be the store itself, already waited on for tracking.retry_seconds:
            # try briefly to mark the planning failed, and report the original error either way.
            tracker.retry_seconds = min(tracker.retry_seconds, 10.0)
            with contextlib.suppress(OpplanError):
                tracker.end_run(parent, n.STATUS_FAILED)
            raise
        document = {"config_hash": digest, "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                                                      "planning_run_id": parent}, **result.to_json()}
        atomic_write_json(out_json, document)
        atomic_write_json(out_metrics, {"plan_score": result.score, "plan_epochs": result.total_epochs_trained,
                                        "path_epochs": result.path_epochs, "plan_compute_seconds": result.total_seconds})
        write_curves(tracker, result, out_curves)
        draw_graph(graph, out_png, chosen=result.path, labels=_edge_labels(result))
        tracker.log_artifact(parent, out_json)
        tracker.log_artifact(parent, out_png)
        tracker.log_metrics(parent, {n.M_SCORE: result.score, n.M_EPOCHS_TRAINED: result.total_epochs_trained,
                                     n.M_COMPUTE_SECONDS: result.total_seconds})
        tracker.end_run(parent, n.STATUS_FINISHED)
    log.info("chosen path: %s (V=%.4f)", " → ".join(s.name for s in result.path), result.score)
    return result


def _edge_labels(result: PlanResult) -> dict[tuple[str, str], str]:
    return {(r.src, r.dst): ("failed" if r.status != "finished" else f"{r.chosen_epoch}ep {r.score:.3f}")
            for r in result.records}
