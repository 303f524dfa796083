"""Stage ``plan``: explore the transition graph, every transition an MLflow nested run
(:mod:`opplan.stages.transitions`), and choose the path by dynamic programming over the
scores read back from MLflow (:mod:`opplan.planning.dp`, pure).

With ``plan.workers: K > 1`` the transitions that are ready at the same time train in K
worker processes (:mod:`opplan.stages.workers`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from opplan import distributed
from opplan import names as n
from opplan.config import Params
from opplan.documents import PlanDocument
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_json, atomic_write_text
from opplan.planning.decisions import FINAL, Rule
from opplan.planning.diagnosis import Finding, diagnose, diagnosis_json, diagnosis_tag
from opplan.planning.dp import plan_path
from opplan.planning.drawing import draw_graph
from opplan.planning.graph import graph_from_params
from opplan.planning.records import PlanResult, TransitionRecord
from opplan.progress import PlanProgress
from opplan.stages.common import WORK_ROOT, config_hash, planning_config, project_lock, require_shards
from opplan.stages.transitions import TransitionRunner, run_name
from opplan.stages.workers import plan_with_workers, worker_devices
from opplan.stats import margin_in_se
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
        tracker.watch_system(parent)  # CPU, memory, GPU of the whole planning (its workers included)
        tracker.log_params(parent, speed_params(params))  # recorded even where the hash leaves them out
        log.info("planning %s (MLflow run %s in %s), %d states, %d edges", digest, parent, tracker.uri,
                 len(graph.states), len(graph.edges))
        try:
            if params.plan.workers == 1:
                runner = TransitionRunner(tracker, parent, TrainSetup(params, shards), WORK_ROOT / digest)
                result = plan_path(graph, PlanProgress(len(graph.edges)).wrap(runner), rule=decision_rule(params),
                                   prune=params.plan.prune)
            else:
                result = plan_with_workers(params, devices, shards, graph, tracker.uri, parent, WORK_ROOT / digest,
                                           rule=decision_rule(params))
        except OpplanError:
            # The error may be the store itself, already waited on for tracking.retry_seconds:
            # try briefly to mark the planning failed, and report the original error either way.
            tracker.retry_seconds = min(tracker.retry_seconds, 10.0)
            with contextlib.suppress(OpplanError):
                tracker.end_run(parent, n.STATUS_FAILED)
            raise
        findings = diagnose_planning(params, shards, result)
        log_decisions(tracker, parent, result, findings)
        document = PlanDocument.new({"config_hash": digest,
                                     "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                                                "planning_run_id": parent},
                                     **result.to_json(), "diagnosis": diagnosis_json(findings)})
        document.write(out_json)
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


def speed_params(params: Params) -> dict[str, Any]:
    """The planning options the configuration hash may leave out (:func:`planning_config`), as
    MLflow params of the planning run: ``plan.setting``, pruning (also when off) and the
    validation cache."""
    plan = params.plan
    return flatten("", {"plan": {"setting": plan.setting, "prune": plan.prune, "prune_z": plan.prune_z,
                                 "prune_min_epochs": plan.prune_min_epochs},
                        "train": {"val_cache_mb": params.train.val_cache_mb}})


def decision_rule(params: Params) -> Rule:
    """The DP's decision rule of ``plan.decision`` and ``plan.tie_se``."""
    return Rule(params.plan.decision, params.plan.tie_se)


def diagnose_planning(params: Params, shards: Path, result: PlanResult) -> list[Finding]:
    """The no-learning diagnosis (:mod:`opplan.planning.diagnosis`), one WARNING per finding.

    Chance is that of ``plan.metric`` on the internal-validation labels."""
    from opplan.data.dataset import num_classes, read_videos
    from opplan.stats import chance_level

    videos = read_videos(shards)
    labels = videos.loc[videos["split"] == "val", "label_index"].to_numpy()
    chance = chance_level(labels, num_classes(shards), params.plan.metric)
    findings = diagnose(result, chance=chance, delay=params.plan.delay, metric=params.plan.metric)
    for finding in findings:
        log.warning("planning diagnosis %s: %s. What to change: %s", finding.code, finding.seen, finding.change)
    return findings


def log_decisions(tracker: Tracker, parent: str, result: PlanResult, findings: list[Finding]) -> None:
    """Each DP choice's runner-up and margin on the chosen transition's run, every other
    finished transition's margin to the one chosen over it, and ``opplan.on_path`` on every
    transition (with its run name, marked on the path); the path's smallest margin, the final
    choice and the diagnosis on the planning run."""
    on_path = {(r.src, r.dst) for r in result.transitions}
    for record in result.records:
        if record.run_id is None:
            continue
        chosen = (record.src, record.dst) in on_path
        tags = {n.TAG_ON_PATH: str(chosen).lower(), n.TAG_RUN_NAME: run_name(record.src, record.dst, on_path=chosen)}
        margin, versus = _margin_of(result, record)
        if versus is not None:
            tags[n.TAG_DP_VERSUS] = versus
        if margin is not None and math.isfinite(margin[1]):
            tracker.log_metrics(record.run_id, {n.M_DP_MARGIN: margin[0], n.M_DP_MARGIN_SE: margin[1]})
        tracker.set_tags(record.run_id, tags)
    for state, choice in result.choices.items():
        record = result.best.get(state)
        if record is None or record.run_id is None:
            continue
        tracker.set_tags(record.run_id, {n.TAG_DP_RUNNER_UP: choice.runner_up or "none",
                                         n.TAG_DP_TIE: str(choice.tie).lower()})
    margins = [c.margin_se for c in result.path_choices if c.margin_se is not None and c.runner_up is not None]
    final = result.choices[FINAL]
    metrics = {n.M_PATH_MIN_MARGIN_SE: min(margins, default=math.inf), n.M_FINAL_MARGIN_SE: final.margin_se}
    tracker.log_metrics(parent, {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)})
    tracker.set_tags(parent, {n.TAG_FINAL_RUNNER_UP: final.runner_up or "none",
                              n.TAG_DIAGNOSIS: diagnosis_tag(findings)})
    coin_flips = [c for c in result.path_choices if c.margin_se is not None and abs(c.margin_se) < 1.0]
    if coin_flips:
        log.info("%d of the path's %d decisions were within 1 SE of their runner-up: %s", len(coin_flips),
                 len(result.path_choices), "; ".join(c.describe() for c in coin_flips))


def _margin_of(result: PlanResult, record: TransitionRecord) -> tuple[tuple[float, float] | None, str | None]:
    """``((margin, margin in SEs), versus)`` of a finished transition in its state's decision:
    the chosen one against the runner-up (the DP's own numbers), any other against the chosen
    one (negative when it scored lower). ``(None, None)`` for a failed transition or a
    state decided without a rival."""
    choice, chosen = result.choices.get(record.dst), result.best.get(record.dst)
    if not record.finished or choice is None or chosen is None:
        return None, None
    if chosen.run_id == record.run_id:
        if choice.runner_up is None or choice.margin is None or choice.margin_se is None:
            return None, None
        return (choice.margin, choice.margin_se), choice.runner_up
    margin_se = margin_in_se(record.score, chosen.score, record.se_value(), chosen.se_value())
    return (record.score - chosen.score, margin_se), chosen.src


def _edge_labels(result: PlanResult) -> dict[tuple[str, str], str]:
    return {(r.src, r.dst): (f"pruned {r.epochs_trained}ep" if r.status == n.Status.PRUNED else "failed"
                             if r.status != n.STATUS_FINISHED else f"{r.chosen_epoch}ep {r.score:.3f}")
            for r in result.records}
