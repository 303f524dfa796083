"""Stage ``plan``: explore the transition graph, every transition an MLflow nested run,
and choose the path by dynamic programming over the scores read back from MLflow.

The DP itself (``opplan.planning.dp``) is pure; this module gives it a
``run_transition`` that (1) reuses a transition already finished in MLflow under the
same planning configuration, (2) otherwise trains it (resuming a killed one from its
last epoch) and logs it, and (3) returns the record *as read back from MLflow*.

With ``plan.workers: K > 1`` the DP runs as :func:`~opplan.planning.dp.plan_path_parallel`:
K spawned worker processes, one per device, each with its own ``TransitionRunner``,
train the transitions that are ready at the same time. Only names, params and records
cross the process boundary; everything else goes through MLflow, as in sequence.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from opplan import distributed
from opplan import tracking as t
from opplan.config import Params
from opplan.data.shards import shards_fingerprint
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_json, atomic_write_text
from opplan.planning.diagnosis import Finding, diagnose, diagnosis_json, diagnosis_tag
from opplan.planning.dp import FINAL, PlanResult, Rule, TransitionRecord, plan_path, plan_path_parallel
from opplan.planning.graph import Node, State, TransitionGraph, draw_graph, graph_from_params
from opplan.stages.common import WORK_ROOT, project_lock, require_shards
from opplan.train.plots import plot_transition
from opplan.train.progress import PlanProgress
from opplan.train.setup import TrainSetup
from opplan.train.transition import TransitionOutcome, clear_work_dir, train_transition

log = logging.getLogger(__name__)

PLANNING_SECTIONS = ("prepare", "model", "train", "plan")


def planning_config(params: Params, shards: Path) -> dict[str, Any]:
    """Everything a transition's result depends on; its hash identifies a planning.

    ``plan.workers`` is left out: the plan does not depend on it, and a rerun with
    another number of workers reuses the finished runs.
    """
    manifest = hashlib.sha256((shards / "videos.csv").read_bytes()).hexdigest()
    sections = params.section_dict(*PLANNING_SECTIONS)
    sections["plan"].pop("workers", None)
    return {"seed": params.seed, **sections, "manifest_hash": manifest, "shards_hash": shards_fingerprint(shards)}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def transition_name(src: Node, dst: State) -> str:
    return f"{src.name} → {dst.name}"


class TransitionRunner:
    """The ``run_transition`` callable the DP drives (see module docstring)."""

    def __init__(self, tracker: t.Tracker, parent_id: str, setup: TrainSetup, work_dir: Path) -> None:
        self.tracker, self.parent_id, self.setup, self.work_dir = tracker, parent_id, setup, work_dir

    def __call__(self, src: Node, dst: State, src_record: TransitionRecord | None) -> TransitionRecord:
        src_name = src.name
        runs = self.tracker.search({t.TAG_KIND: t.KIND_TRANSITION, t.TAG_SRC: src_name, t.TAG_DST: dst.name},
                                   parent_id=self.parent_id)
        done = [r for r in runs if r.data.tags.get(t.TAG_STATUS) in (t.STATUS_FINISHED, t.STATUS_FAILED)]
        if done:
            log.info("%s: reusing finished MLflow run %s", transition_name(src, dst), done[-1].info.run_id)
            self._clear(done[-1].info.run_id)  # killed after the run ended, before its folder was cleared
            return record_from_run(self.tracker, done[-1].info.run_id)
        running = [r for r in runs if r.data.tags.get(t.TAG_STATUS) == t.STATUS_RUNNING]
        for stale in running[:-1]:
            self.tracker.end_run(stale.info.run_id, t.STATUS_KILLED)
        run_id = running[-1].info.run_id if running else None
        if run_id is not None and not self._resumable(run_id):
            log.warning("%s: MLflow run %s was interrupted and its work folder %s is gone; marking it killed and "
                        "training the transition again in a new run", transition_name(src, dst), run_id,
                        self._work(run_id))
            self.tracker.end_run(run_id, t.STATUS_KILLED)
            run_id = None
        if run_id is None:
            run_id = self._start(src_name, dst)
        self.tracker.log_params(run_id, {"src": src_name, "dst": dst.name, "sampling": dst.sampling,
                                         "clip_length": dst.clip_length, "lr": dst.lr})  # same values: idempotent
        return self._train(run_id, src, dst, src_record)

    def _work(self, run_id: str) -> Path:
        return self.work_dir / "transitions" / run_id

    def _clear(self, run_id: str) -> None:
        clear_work_dir(self._work(run_id))

    def _resumable(self, run_id: str) -> bool:
        """An interrupted run continues in place only if what it logged is backed by its epoch
        states: per-epoch metrics without the states would be logged twice (MLflow has no undo)."""
        if any(self._work(run_id).glob("epoch_*.pt")):
            return True
        return not self.tracker.history(run_id, t.M_VAL_ACC)

    def _start(self, src_name: str, dst: State) -> str:
        tags = {t.TAG_KIND: t.KIND_TRANSITION, t.TAG_SRC: src_name, t.TAG_DST: dst.name,
                t.TAG_SAMPLING: dst.sampling, t.TAG_CLIP_LENGTH: dst.clip_length, t.TAG_LR: f"{dst.lr:g}",
                t.TAG_STATUS: t.STATUS_RUNNING}
        return self.tracker.create_run(f"{src_name} → {dst.name}", tags, parent_id=self.parent_id)

    def _train(self, run_id: str, src: Node, dst: State, src_record: TransitionRecord | None) -> TransitionRecord:
        name = transition_name(src, dst)
        work = self._work(run_id)
        init = None
        if src_record is not None:  # into this run's own folder: workers may start from one source at once
            init = self.tracker.download_artifact(src_record.run_id, f"{t.ARTIFACT_CHECKPOINT_DIR}/model.pt",
                                                  work / "source")
        outcome = train_transition(self.setup, dst, init, work, label=name,
                                   on_epoch=self.tracker.epoch_logger(run_id, t.M_VAL_ACC))
        self._log_outcome(run_id, dst, outcome, work)
        clear_work_dir(work)
        return record_from_run(self.tracker, run_id)

    def _log_outcome(self, run_id: str, dst: State, out: TransitionOutcome, work: Path) -> None:
        summary = {t.M_EPOCHS_TRAINED: out.epochs_trained, t.M_CLIPS_SEEN: out.epochs_trained * self.setup.train_videos,
                   t.M_COMPUTE_SECONDS: sum(out.seconds)}
        if out.status == "finished":
            score = out.fitted if self.setup.params.plan.score == "fitted" else out.observed
            summary |= {t.M_CHOSEN_EPOCH: out.t_star, t.M_FITTED: out.fitted, t.M_OBSERVED: out.observed,
                        t.M_SCORE: score, t.M_SCORE_SE: out.se, t.M_CAPPED: float(out.capped),
                        t.M_START_MARGIN_SE: out.start_margin_se}
            self.tracker.set_tags(run_id, {t.TAG_KEEP: out.keep or "knee", t.TAG_CAPPED: str(out.capped).lower()})
            if out.capped:
                log.warning("%s: stopped by plan.max_epochs = %d while its curve still rose (capped); a larger "
                            "plan.max_epochs lets the knee decide", self.tracker.get_run(run_id).info.run_name,
                            self.setup.params.plan.max_epochs)
            if out.rmse is not None:
                summary |= {t.M_KNEE_RMSE: out.rmse, t.M_KNEE_R2: out.r2}
            self.tracker.log_artifact(run_id, out.checkpoint, t.ARTIFACT_CHECKPOINT_DIR)
        else:
            self.tracker.set_tags(run_id, {t.TAG_FAILURE: (out.failure or "")[:4000]})
        if t.M_EPOCHS_TRAINED not in self.tracker.get_run(run_id).data.metrics:  # not yet, or killed after
            self.tracker.log_metrics(run_id, {k: v for k, v in summary.items() if v is not None and math.isfinite(v)},
                                     step=out.epochs_trained)
        plot = work / "curve.png"
        plot_transition(out, self.setup.params.plan.fit_function, plot, title=self.tracker.get_run(run_id).info.run_name)
        self.tracker.log_artifact(run_id, plot, t.ARTIFACT_PLOTS_DIR)
        self.tracker.end_run(run_id, t.STATUS_FINISHED if out.status == "finished" else t.STATUS_FAILED)


def record_from_run(tracker: t.Tracker, run_id: str) -> TransitionRecord:
    """A transition's record, from what MLflow holds (the DP's only source of scores)."""
    run = tracker.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    failed = tags.get(t.TAG_STATUS) != t.STATUS_FINISHED
    return TransitionRecord(
        src=tags[t.TAG_SRC], dst=tags[t.TAG_DST],
        status=t.STATUS_FAILED if failed else t.STATUS_FINISHED,
        score=-math.inf if failed else metrics[t.M_SCORE],
        fitted=metrics.get(t.M_FITTED), observed=metrics.get(t.M_OBSERVED),
        chosen_epoch=None if failed else int(metrics[t.M_CHOSEN_EPOCH]),
        epochs_trained=int(metrics.get(t.M_EPOCHS_TRAINED, 0)),
        seconds=metrics.get(t.M_COMPUTE_SECONDS, 0.0),
        run_id=run_id,
        checkpoint=None if failed else f"runs:/{run_id}/{t.ARTIFACT_CHECKPOINT_DIR}/model.pt",
        se=metrics.get(t.M_SCORE_SE),
        capped=bool(metrics.get(t.M_CAPPED, 0.0)),
    )


def find_or_start_planning(tracker: t.Tracker, config: dict[str, Any], digest: str) -> str:
    """The planning run of this configuration: reused when a run was interrupted."""
    runs = tracker.search({t.TAG_KIND: t.KIND_PLANNING, t.TAG_CONFIG_HASH: digest})
    if runs:
        run_id = runs[-1].info.run_id
    else:
        run_id = tracker.create_run(f"plan {digest[:8]}", {t.TAG_KIND: t.KIND_PLANNING, t.TAG_CONFIG_HASH: digest,
                                                          t.TAG_MANIFEST_HASH: config["manifest_hash"],
                                                          t.TAG_STATUS: t.STATUS_RUNNING})
    # always: a kill may have come between creating the run and logging (all of) them
    tracker.log_params(run_id, {**t.flatten("", config), "config_hash": digest})
    return run_id


def write_curves(tracker: t.Tracker, result: PlanResult, folder: Path) -> None:
    """One ``epoch,val_acc`` CSV per explored transition, read back from MLflow (DVC plots)."""
    if folder.exists():
        shutil.rmtree(folder)
    for record in result.records:
        if record.run_id is None:
            continue
        rows = ["epoch,val_acc"] + [f"{step},{value:.6f}" for step, value in tracker.history(record.run_id, t.M_VAL_ACC)]
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
        tracker = t.Tracker.from_params(params.tracking)
        parent = find_or_start_planning(tracker, config, digest)
        log.info("planning %s (MLflow run %s in %s), %d states, %d edges", digest, parent, tracker.uri,
                 len(graph.states), len(graph.edges))
        try:
            if params.plan.workers == 1:
                runner = TransitionRunner(tracker, parent, TrainSetup(params, shards), WORK_ROOT / digest)
                result = plan_path(graph, PlanProgress(len(graph.edges)).wrap(runner), rule=decision_rule(params))
            else:
                result = plan_with_workers(params, devices, shards, graph, tracker.uri, parent, WORK_ROOT / digest)
        except OpplanError:
            # The error may be the store itself, already waited on for tracking.retry_seconds:
            # try briefly to mark the planning failed, and report the original error either way.
            tracker.retry_seconds = min(tracker.retry_seconds, 10.0)
            with contextlib.suppress(OpplanError):
                tracker.end_run(parent, t.STATUS_FAILED)
            raise
        findings = diagnose_planning(params, shards, result)
        log_decisions(tracker, parent, result, findings)
        document = {"config_hash": digest, "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                                                      "planning_run_id": parent}, **result.to_json(),
                    "diagnosis": diagnosis_json(findings)}
        atomic_write_json(out_json, document)
        atomic_write_json(out_metrics, {"plan_score": result.score, "plan_epochs": result.total_epochs_trained,
                                        "path_epochs": result.path_epochs, "plan_compute_seconds": result.total_seconds})
        write_curves(tracker, result, out_curves)
        draw_graph(graph, out_png, chosen=result.path, labels=_edge_labels(result))
        tracker.log_artifact(parent, out_json)
        tracker.log_artifact(parent, out_png)
        tracker.log_metrics(parent, {t.M_SCORE: result.score, t.M_EPOCHS_TRAINED: result.total_epochs_trained,
                                     t.M_COMPUTE_SECONDS: result.total_seconds})
        tracker.end_run(parent, t.STATUS_FINISHED)
    log.info("chosen path: %s (V=%.4f)", " → ".join(s.name for s in result.path), result.score)
    return result


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


def log_decisions(tracker: t.Tracker, parent: str, result: PlanResult, findings: list[Finding]) -> None:
    """Each DP choice's runner-up and margin on the chosen transition's run; the path's smallest
    margin, the final choice and the diagnosis on the planning run."""
    for state, choice in result.choices.items():
        record = result.best.get(state)
        if record is None or record.run_id is None:
            continue
        tracker.log_metrics(record.run_id, {k: v for k, v in {t.M_DP_MARGIN: choice.margin,
                                                               t.M_DP_MARGIN_SE: choice.margin_se}.items()
                                            if v is not None and math.isfinite(v)})
        tracker.set_tags(record.run_id, {t.TAG_DP_RUNNER_UP: choice.runner_up or "none",
                                         t.TAG_DP_TIE: str(choice.tie).lower()})
    margins = [c.margin_se for c in result.path_choices if c.margin_se is not None and c.runner_up is not None]
    final = result.choices[FINAL]
    metrics = {t.M_PATH_MIN_MARGIN_SE: min(margins, default=math.inf), t.M_FINAL_MARGIN_SE: final.margin_se}
    tracker.log_metrics(parent, {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)})
    tracker.set_tags(parent, {t.TAG_FINAL_RUNNER_UP: final.runner_up or "none",
                              t.TAG_DIAGNOSIS: diagnosis_tag(findings)})
    coin_flips = [c for c in result.path_choices if c.margin_se is not None and abs(c.margin_se) < 1.0]
    if coin_flips:
        log.info("%d of the path's %d decisions were within 1 SE of their runner-up: %s", len(coin_flips),
                 len(result.path_choices), "; ".join(c.describe() for c in coin_flips))


def _edge_labels(result: PlanResult) -> dict[tuple[str, str], str]:
    return {(r.src, r.dst): ("failed" if r.status != "finished" else f"{r.chosen_epoch}ep {r.score:.3f}")
            for r in result.records}


# --- plan.workers > 1: one process per device ---------------------------------------------


def worker_devices(params: Params, workers: int) -> list[str]:
    """The device of each planning worker: CUDA device i for worker i, or the CPU for all."""
    import torch

    from opplan.device import pick_device

    if pick_device(params.device).type != "cuda":
        return ["cpu"] * workers
    count = torch.cuda.device_count()
    if workers > count:
        raise OpplanError(f"plan.workers is {workers} but this machine has {count} CUDA device(s), and each "
                          f"planning worker needs its own: set plan.workers to at most {count}")
    return [f"cuda:{i}" for i in range(workers)]


def plan_with_workers(params: Params, devices: list[str], shards: Path, graph: TransitionGraph, tracker_uri: str,
                      parent_id: str, work_dir: Path) -> PlanResult:
    """The DP with one transition at a time per device of ``devices`` (:func:`worker_devices`),
    each worker a spawned process."""
    workers = len(devices)
    log.info("planning with %d worker processes: %s", workers,
             ", ".join(f"w{i} on {d}" for i, d in enumerate(devices)))
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or MLflow state
    slots = context.Queue()
    for slot in range(workers):
        slots.put(slot)
    init_args = (params, shards.resolve(), tracker_uri, parent_id, work_dir.resolve(), slots, os.getpid(),
                 logging.getLogger().getEffectiveLevel())
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init_args) as pool:

            def submit(src: Node, dst: State, src_record: TransitionRecord | None) -> Future[TransitionRecord]:
                return pool.submit(_run_in_worker, src.name, dst.name, src_record)

            return plan_path_parallel(graph, PlanProgress(len(graph.edges)).wrap(submit), workers,
                                      rule=decision_rule(params))
    finally:
        slots.close()  # slots of workers never started (too few transitions at once) stay unread


# What a worker process builds once (ProcessPoolExecutor's initializer) and its tasks use.
# Process-local: each worker process has its own, the planning process none.
_WORKER: dict[str, Any] = {}


def _init_worker(params: Params, shards: Path, tracker_uri: str, parent_id: str, work_dir: Path, slots: Any,
                 parent_pid: int, log_level: int) -> None:
    """Set up one planning worker: its slot (device), logging, threads, runner, watchdog."""
    import torch

    from opplan.cli import configure_logging

    slot = slots.get()
    configure_logging(log_level <= logging.DEBUG)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_SlotFormatter(handler.formatter or logging.Formatter(), f"[w{slot}] "))
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="opplan-watchdog", daemon=True).start()
    setup = TrainSetup(params, shards, device_index=slot)
    if setup.device.type == "cuda":
        torch.cuda.set_device(setup.device)
    else:  # the cores split between the workers; an OMP_NUM_THREADS below that still holds
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(min(torch.get_num_threads(), max(1, cores // params.plan.workers)))
    tracker = t.Tracker(tracker_uri, params.tracking.experiment, retry_seconds=params.tracking.retry_seconds)
    _WORKER.update(graph=graph_from_params(params.plan),
                   runner=TransitionRunner(tracker, parent_id, setup, work_dir))
    log.info("planning worker %d (pid %d) on %s, %d torch thread(s)", slot, os.getpid(), setup.device,
             torch.get_num_threads())


def _run_in_worker(src: str, dst: str, src_record: TransitionRecord | None) -> TransitionRecord:
    graph: TransitionGraph = _WORKER["graph"]
    return _WORKER["runner"](graph.state(src), graph.state(dst), src_record)


def _exit_with_parent(parent_pid: int, every: float = 0.5) -> None:
    """End this worker when the planning process is gone (SIGKILL leaves no one to stop it):
    its transition's run stays ``running`` and resumes at the next ``opplan plan``."""
    while os.getppid() == parent_pid:
        time.sleep(every)
    log.warning("the planning process %d is gone: stopping this worker", parent_pid)
    os._exit(1)


class _SlotFormatter(logging.Formatter):
    """Prefixes every line of a worker with its slot (``[w1] ...``)."""

    def __init__(self, inner: logging.Formatter, prefix: str) -> None:
        super().__init__()
        self.inner, self.prefix = inner, prefix

    def format(self, record: logging.LogRecord) -> str:
        return self.prefix + self.inner.format(record)
