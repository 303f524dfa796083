"""Which MLflow run a piece of training uses: one set of rules for every stage.

A piece of work (a transition of ``plan``, the ``final`` retrain, one baseline candidate)
is identified by its tags. Its runs are found again by those tags, and:

1. a run that ended (``finished`` or ``failed``) is **reused**: nothing is trained again
   (training is deterministic, so a failed run would fail again). Its work folder is
   removed: a kill may have come after the run ended, before the folder was cleared. A
   stage whose output files are gone writes them again from the run (``final``).
2. otherwise the newest ``running`` run (a process killed mid-run) is **resumed** when its
   epoch states are in its work folder, or when it has logged no epoch yet. A run whose
   epochs are logged but whose states are gone cannot continue: its logged epochs would
   be logged twice (MLflow has no undo), so it is marked ``killed``.
3. every older ``running`` run is a stale duplicate (e.g. a create whose answer was lost)
   and is marked ``killed``; killed runs are never counted.
4. otherwise a new run is **created**.

The summary metrics of a run are logged once (:func:`log_summary_once`): a kill after
logging them and before ending the run must not log them twice on resume.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from opplan.names import ENDED, M_EPOCHS_TRAINED, STATUS_KILLED, STATUS_RUNNING, TAG_STATUS
from opplan.tracking.client import Tracker
from opplan.train.checkpoint import clear_work_dir, latest_epoch_state, run_work_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """One piece of training as MLflow knows it.

    ``key``: the tags that identify it (searched); ``tags``: more tags set when a run is
    created; ``progress_metric``: the metric logged after every epoch; ``work_root``: its
    runs' work folders are ``work_root/<run id>``.
    """

    label: str
    run_name: str
    key: Mapping[str, str]
    work_root: Path
    progress_metric: str
    tags: Mapping[str, Any] = field(default_factory=dict)
    parent_id: str | None = None


@dataclass(frozen=True)
class Claim:
    """The run to use: ``ended`` is the reused run (nothing to train), else ``None``."""

    run_id: str
    work_dir: Path
    ended: Run | None = None

    @property
    def status(self) -> str:
        return STATUS_RUNNING if self.ended is None else self.ended.data.tags[TAG_STATUS]


def status_of(run: Run) -> str:
    return run.data.tags.get(TAG_STATUS, "")


def claim_run(tracker: Tracker, work: Work) -> Claim:
    """The run ``work`` uses, by the rules of the module docstring."""
    runs = tracker.search(work.key, parent_id=work.parent_id)
    running = [r for r in runs if status_of(r) == STATUS_RUNNING]
    ended = [r for r in runs if status_of(r) in ENDED]
    if ended:
        for stale in running:
            _kill(tracker, work, stale, "a duplicate of the ended run it is reused instead of")
        run = ended[-1]
        folder = run_work_dir(work.work_root, run.info.run_id)
        clear_work_dir(folder)
        log.info("%s: reusing %s MLflow run %s", work.label, status_of(run), run.info.run_id)
        return Claim(run.info.run_id, folder, ended=run)
    for stale in running[:-1]:
        _kill(tracker, work, stale, "a stale duplicate of a newer running run")
    if running and _resumable(tracker, work, running[-1]):
        run_id = running[-1].info.run_id
        log.info("%s: resuming interrupted MLflow run %s", work.label, run_id)
        return _watched(tracker, work, Claim(run_id, run_work_dir(work.work_root, run_id)))
    if running:
        _kill(tracker, work, running[-1], f"interrupted, and its work folder "
              f"{run_work_dir(work.work_root, running[-1].info.run_id)} holds no epoch state to continue from")
    run_id = tracker.create_run(work.run_name, {**work.key, **work.tags, TAG_STATUS: STATUS_RUNNING},
                                parent_id=work.parent_id)
    return _watched(tracker, work, Claim(run_id, run_work_dir(work.work_root, run_id)))


def _watched(tracker: Tracker, work: Work, claim: Claim) -> Claim:
    """A top-level run that is about to train gets system metrics (the final run, each baseline
    and retrain); a transition's are its planning run's (:mod:`opplan.tracking.system`)."""
    if work.parent_id is None:
        tracker.watch_system(claim.run_id)
    return claim


def _resumable(tracker: Tracker, work: Work, run: Run) -> bool:
    """Whether an interrupted run continues in place: what it logged is backed by epoch states."""
    if latest_epoch_state(run_work_dir(work.work_root, run.info.run_id)) is not None:
        return True
    return not tracker.history(run.info.run_id, work.progress_metric)


def _kill(tracker: Tracker, work: Work, run: Run, why: str) -> None:
    log.warning("%s: marking MLflow run %s killed (%s); it is not counted", work.label, run.info.run_id, why)
    tracker.end_run(run.info.run_id, STATUS_KILLED)
    clear_work_dir(run_work_dir(work.work_root, run.info.run_id))


def log_summary_once(tracker: Tracker, run_id: str, summary: Mapping[str, float | None], *, step: int) -> None:
    """Log a run's closing metrics unless it has them (``epochs_trained`` is always among them)."""
    if M_EPOCHS_TRAINED not in summary:
        raise ValueError(f"a summary names {M_EPOCHS_TRAINED}, which marks it as logged")
    if M_EPOCHS_TRAINED not in tracker.get_run(run_id).data.metrics:  # not yet, or killed after logging it
        tracker.log_metrics(run_id, {k: v for k, v in summary.items() if v is not None}, step=step)
