"""One transition of the planning as an MLflow nested run: the ``run_transition`` the DP drives.

It (1) reuses a transition already ended in MLflow under the same planning run, (2)
otherwise trains it (resuming a killed one from its last epoch) and logs it, and (3)
returns the record *as read back from MLflow*: the DP's only source of scores. Which
run is used follows :mod:`opplan.tracking.lifecycle`, as in every stage.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from opplan import names as n
from opplan.fileio import atomic_write_json
from opplan.planning.decisions import Bar
from opplan.planning.graph import Node, State
from opplan.planning.records import PRUNED, TransitionRecord
from opplan.tracking.client import Tracker
from opplan.tracking.lifecycle import Work, claim_run, log_summary_once
from opplan.train.checkpoint import clear_work_dir
from opplan.train.plots import plot_transition
from opplan.train.setup import TrainSetup
from opplan.train.transition import TransitionOutcome, fit_document, train_transition

log = logging.getLogger(__name__)


def transition_name(src: Node, dst: State) -> str:
    return f"{src.name} → {dst.name}"


def run_name(src: str, dst: str, *, on_path: bool = False) -> str:
    """The run's name in MLflow: the destination first, so that a cut name still tells
    siblings apart (the runs table shows about 15 characters); once planned, a transition on
    the chosen path is renamed with :data:`~opplan.names.PATH_MARK` in front, which the runs
    table shows in its first column (the ``opplan.on_path`` tag column sits far right)."""
    return f"{n.PATH_MARK if on_path else ''}{dst} ← {src}"


class TransitionRunner:
    """The ``run_transition`` callable the DP drives (see module docstring); its runs are
    nested under ``parent_id``, their work folders under ``work_dir/transitions``."""

    def __init__(self, tracker: Tracker, parent_id: str, setup: TrainSetup, work_dir: Path) -> None:
        self.tracker, self.parent_id, self.setup, self.work_dir = tracker, parent_id, setup, work_dir

    def work(self, src: Node, dst: State) -> Work:
        return Work(label=transition_name(src, dst), run_name=run_name(src.name, dst.name),
                    key={n.TAG_KIND: n.KIND_TRANSITION, n.TAG_SRC: src.name, n.TAG_DST: dst.name},
                    tags={n.TAG_SAMPLING: dst.sampling, n.TAG_CLIP_LENGTH: dst.clip_length, n.TAG_LR: f"{dst.lr:g}"},
                    work_root=self.work_dir / "transitions", progress_metric=n.M_VAL_ACC, parent_id=self.parent_id)

    def __call__(self, src: Node, dst: State, src_record: TransitionRecord | None,
                 bar: Bar | None = None) -> TransitionRecord:
        """``bar``: with ``plan.prune``, what the transition must be able to reach (:class:`Bar`)."""
        claim = claim_run(self.tracker, self.work(src, dst))
        if claim.ended is None:
            self.tracker.log_params(claim.run_id, {"src": src.name, "dst": dst.name, "sampling": dst.sampling,
                                                   "clip_length": dst.clip_length, "lr": dst.lr})  # idempotent
            self._train(claim.run_id, claim.work_dir, src, dst, src_record, bar)
        return record_from_run(self.tracker, claim.run_id)

    def _train(self, run_id: str, work: Path, src: Node, dst: State, src_record: TransitionRecord | None,
               bar: Bar | None = None) -> None:
        init = None
        if src_record is not None:  # into this run's own folder: workers may start from one source at once
            init = self.tracker.download_checkpoint(src_record.run_id, work / "source")
        outcome = train_transition(self.setup, dst, init, work, label=transition_name(src, dst),
                                   on_epoch=self.tracker.epoch_logger(run_id, n.M_VAL_ACC), bar=bar)
        self._log_outcome(run_id, transition_name(src, dst), outcome, work)
        clear_work_dir(work)

    def _log_outcome(self, run_id: str, name: str, out: TransitionOutcome, work: Path) -> None:
        """``name``: the run's name (:func:`transition_name`), for the log and the plot."""
        summary: dict[str, float | None] = {}
        if out.status == n.STATUS_FINISHED:  # V and the decision's numbers first: MLflow lists metrics as logged
            score = out.fitted if self.setup.params.plan.score == "fitted" else out.observed
            summary |= {n.M_SCORE: score, n.M_SCORE_SE: out.se, n.M_CHOSEN_EPOCH: out.t_star,
                        n.M_FITTED: out.fitted, n.M_OBSERVED: out.observed, n.M_CAPPED: float(out.capped),
                        n.M_START_MARGIN_SE: out.start_margin_se}
            self.tracker.set_tags(run_id, {n.TAG_KEEP: out.keep or "knee", n.TAG_CAPPED: str(out.capped).lower()})
            if out.capped:
                log.warning("%s: stopped by plan.max_epochs = %d while its curve still rose (capped); a larger "
                            "plan.max_epochs lets the knee decide", name,
                            self.setup.params.plan.max_epochs)
            if out.rmse is not None:
                summary |= {n.M_KNEE_RMSE: out.rmse, n.M_KNEE_R2: out.r2}
            self.tracker.log_checkpoint(run_id, out.checkpoint)
            fit = work / n.ARTIFACT_FIT
            atomic_write_json(fit, fit_document(out, self.setup.params.plan.fit_function))
            self.tracker.log_artifact(run_id, fit)
        elif out.status == PRUNED:
            summary |= {n.M_PRUNE_BOUND: out.bound, n.M_PRUNE_BAR: out.bar}
            self.tracker.set_tags(run_id, {n.TAG_PRUNED: "true"})
            log.info("%s: pruned after %d epochs: its bound %.4f cannot reach %.4f, the best V into %s so far",
                     name, out.epochs_trained, out.bound, out.bar, name.split(" → ")[-1])
        else:
            self.tracker.set_tags(run_id, {n.TAG_FAILURE: (out.failure or "")[:4000]})
        summary |= {n.M_EPOCHS_TRAINED: out.epochs_trained,
                    n.M_CLIPS_SEEN: out.epochs_trained * self.setup.train_videos,
                    n.M_COMPUTE_SECONDS: sum(out.seconds)}
        log_summary_once(self.tracker, run_id, {k: v for k, v in summary.items() if v is not None and math.isfinite(v)},
                         step=out.epochs_trained)
        plot = work / n.ARTIFACT_CURVE_PLOT  # at the artifact root: MLflow's compare page shows those side by side
        plot_transition(out, self.setup.params.plan.fit_function, plot, title=name)
        self.tracker.log_artifact(run_id, plot)
        # a pruned run ended as planned: finished, so that a rerun reuses it (its tag says pruned)
        self.tracker.end_run(run_id, n.STATUS_FAILED if out.status == n.STATUS_FAILED else n.STATUS_FINISHED)


def record_from_run(tracker: Tracker, run_id: str) -> TransitionRecord:
    """A transition's record, from what MLflow holds (the DP's only source of scores)."""
    run = tracker.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    failed = tags.get(n.TAG_STATUS) != n.STATUS_FINISHED
    if not failed and tags.get(n.TAG_PRUNED) == "true":
        return TransitionRecord(src=tags[n.TAG_SRC], dst=tags[n.TAG_DST], status=PRUNED,
                                epochs_trained=int(metrics.get(n.M_EPOCHS_TRAINED, 0)),
                                seconds=metrics.get(n.M_COMPUTE_SECONDS, 0.0), run_id=run_id,
                                bound=metrics.get(n.M_PRUNE_BOUND))
    return TransitionRecord(
        src=tags[n.TAG_SRC], dst=tags[n.TAG_DST],
        status=n.STATUS_FAILED if failed else n.STATUS_FINISHED,
        score=-math.inf if failed else metrics[n.M_SCORE],
        fitted=metrics.get(n.M_FITTED), observed=metrics.get(n.M_OBSERVED),
        chosen_epoch=None if failed else int(metrics[n.M_CHOSEN_EPOCH]),
        epochs_trained=int(metrics.get(n.M_EPOCHS_TRAINED, 0)),
        seconds=metrics.get(n.M_COMPUTE_SECONDS, 0.0),
        run_id=run_id,
        checkpoint=None if failed else n.checkpoint_uri(run_id),
        se=metrics.get(n.M_SCORE_SE),
        capped=bool(metrics.get(n.M_CAPPED, 0.0)),
    )
