"""OP against the best hand-tuned strategy (HS), in accuracy and in cost (docs/design.md §6, §9).

Pure: DataFrames from :mod:`opplan.report.collect` in, :class:`Comparison` out.

- OP's accuracy is the held-out evaluation logged on the final run that follows a
  planning (tag ``opplan.plan_run``); its cost is the planning's compute (every
  explored transition, paper Table 5), with the final retrain reported beside it.
- HS is chosen as a user would (docs/design.md §10): the candidate with the best top-1 on the
  internal validation split (``val_top1``), retrained on the full training set per seed
  (``hs_retrain`` runs) and tested once each. The paper's view, the best candidate on the
  held-out split itself, is the *oracle* HS (``hs``), shown beside it with the grid's mean
  and median. The grid's cost is the sum over all its candidates, failed ones included
  (they were paid for).
- OP's held-out top-1 is the mean over its seeds (the final run and any ``op_retrain``
  runs); its interval and the paired test against the selected HS come from the per-video
  predictions (:mod:`opplan.stats`, :mod:`opplan.predictions`).
- Baselines carry no planning id. When ``<experiment>-baselines`` holds several grids
  (``opplan.config_hash``), the most recently started one is compared.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opplan import stats
from opplan import tracking as t
from opplan.documents import Diagnosis, PlanDocument
from opplan.predictions import mean_over_runs, paired, unpaired_reason
from opplan.report.collect import EVAL_METRICS, StoreData, pick_final
from opplan.stats import DEFAULT_MARGIN, Estimate, PairedComparison, paired_compare, seed_estimate, video_estimate

SECONDS_PER_HOUR = 3600.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cost:
    """Compute spent: wall-clock training seconds, epochs and clips seen."""

    seconds: float
    epochs: float
    clips: float
    partial: bool = False  # the run that should total it never finished: a sum of what there is

    @property
    def hours(self) -> float:
        return self.seconds / SECONDS_PER_HOUR


@dataclass(frozen=True)
class Step:
    """One transition of the chosen path and the epochs it contributes (its knee t*)."""

    src: str
    dst: str
    epochs: int


@dataclass(frozen=True)
class Comparison:
    """One planning against its experiment's baseline grid."""

    experiment: str
    planning_run: str
    config_hash: str
    planning_status: str
    path: tuple[Step, ...] | None  # None: no plan.json (planning unfinished)
    score: float | None  # V of the chosen path
    planning_cost: Cost
    final_run: str | None
    final_cost: Cost | None
    evaluation: dict[str, float] | None  # top1, top5, mean_class_acc, single_view_top1, heldout_plan_signal
    hs: dict[str, Any] | None  # the best candidate's row
    grid_cost: Cost | None
    grid_runs: int
    other_grids: int  # further grids in the baselines experiment, not compared
    noise: Noise | None = None  # seeds, intervals, the selected HS and the paired test (None: no data)
    signal: str = "top1"  # plan.metric, plan.score, plan.val_clips: what V measured ("top135, fitted, 3 clips")

    @property
    def op_top1(self) -> float | None:
        return None if self.evaluation is None else self.evaluation.get(t.M_TOP1)

    @property
    def hs_top1(self) -> float | None:
        return None if self.hs is None else self.hs[t.M_TOP1]

    @property
    def delta(self) -> float | None:
        """OP's top-1 minus HS's (fractions; positive: OP wins)."""
        if self.op_top1 is None or self.hs_top1 is None:
            return None
        return self.op_top1 - self.hs_top1

    @property
    def path_epochs(self) -> int | None:
        return None if self.path is None else sum(s.epochs for s in self.path)

    @property
    def ratio_seconds(self) -> float | None:
        """The grid's compute time over the planning's (the paper: 7–14)."""
        return _ratio(self.grid_cost.seconds if self.grid_cost else None, self.planning_cost.seconds)

    @property
    def ratio_epochs(self) -> float | None:
        return _ratio(self.grid_cost.epochs if self.grid_cost else None, self.planning_cost.epochs)


@dataclass(frozen=True)
class Arm:
    """One side of the comparison retrained over seeds: per-seed held-out top-1 and the interval
    over the held-out videos of its seed-averaged per-video correctness."""

    runs: tuple[str, ...]
    top1: tuple[float, ...]  # per seed
    single_view: tuple[float, ...]
    videos: Estimate | None  # from the predictions; None when none were logged
    seeds: Estimate  # spread over seeds (an interval from 2 seeds on)

    @property
    def mean(self) -> float:
        return self.seeds.mean

    @property
    def spread(self) -> float:
        """The sample SD of top-1 over the seeds (NaN with one seed)."""
        return float(np.std(self.top1, ddof=1)) if len(self.top1) > 1 else math.nan


@dataclass(frozen=True)
class Noise:
    """What docs/design.md §10 asks the report to state: OP and the validation-selected HS over seeds,
    the paired test and its verdict, the oracle and the grid's mean and median."""

    op: Arm | None
    hs: Arm | None
    selected: dict[str, Any] | None  # the candidate chosen on internal validation
    paired: PairedComparison | None  # OP - HS over the held-out videos
    grid_mean: float | None
    grid_median: float | None
    planned_steps: float | None  # the path's optimizer steps during planning
    final_steps: float | None  # ... and in the final retrain
    diagnosis: Diagnosis | None  # plan.json's no-learning diagnosis

    @property
    def verdict(self) -> str | None:
        return None if self.paired is None else self.paired.verdict


def _ratio(num: float | None, den: float) -> float | None:
    if num is None or not den or not math.isfinite(den):
        return None
    return num / den


def _sum(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].fillna(0).sum())


def path_steps(plan_doc: PlanDocument | None) -> tuple[Step, ...] | None:
    """The chosen path of a ``plan.json``, one step per transition with its kept epochs; ``None``
    without one."""
    if plan_doc is None:
        return None
    return tuple(Step(step.src, step.dst, step.epochs) for step in plan_doc.transitions)


def current_grid(baselines: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame, int]:
    """The experiment's most recently started grid and how many other grids there are."""
    mine = baselines[baselines.experiment == experiment]
    if mine.empty:
        return mine, 0
    latest = mine.groupby("config_hash", sort=False).start_time.max()
    return mine[mine.config_hash == latest.idxmax()], len(latest) - 1


def best_candidate(grid: pd.DataFrame) -> dict[str, Any] | None:
    """HS: the highest top-1 among finished candidates, ties toward fewer epochs."""
    return _best_by(grid, t.M_TOP1)


def _best_by(grid: pd.DataFrame, key: str) -> dict[str, Any] | None:
    """The finished candidate with the highest ``key``, ties toward fewer epochs (None: none)."""
    return stats.best_candidate(grid.to_dict("records"), key, t.STATUS_FINISHED)


def planning_cost(data: StoreData, planning: pd.Series) -> Cost:
    """The planning run's totals; for an unfinished planning, the sum over its transitions."""
    mine = data.transitions[(data.transitions.planning_run == planning.run_id)
                            & (data.transitions.status != t.STATUS_KILLED)]  # retrained in another run
    clips = _sum(mine, t.M_CLIPS_SEEN)
    seconds, epochs = planning[t.M_COMPUTE_SECONDS], planning[t.M_EPOCHS_TRAINED]
    if planning.status == t.STATUS_FINISHED and pd.notna(seconds) and pd.notna(epochs):
        return Cost(float(seconds), float(epochs), clips)
    return Cost(_sum(mine, t.M_COMPUTE_SECONDS), _sum(mine, t.M_EPOCHS_TRAINED), clips, partial=True)


def compare(data: StoreData, planning_run: str, *, margin: float = DEFAULT_MARGIN) -> Comparison:
    """OP of ``planning_run`` against its experiment's HS; ``margin``: the verdict's δ (top-1 fraction)."""
    planning = data.plannings.set_index("run_id", drop=False).loc[planning_run]
    final = pick_final(data.finals, planning_run, data.workspace_final if planning_run == data.primary else None)
    evaluation = None
    final_cost = None
    if final is not None:
        final_cost = Cost(*(float(final[k]) if pd.notna(final[k]) else 0.0
                            for k in (t.M_COMPUTE_SECONDS, t.M_EPOCHS_TRAINED, t.M_CLIPS_SEEN)),
                          partial=final.status != t.STATUS_FINISHED)
        if pd.notna(final[t.M_TOP1]):
            evaluation = {k: float(final[k]) for k in (*EVAL_METRICS, t.M_HELDOUT_SIGNAL)
                          if k in final and pd.notna(final[k])}
    grid, others = current_grid(data.baselines, planning.experiment)
    grid_cost = None if grid.empty else Cost(_sum(grid, t.M_COMPUTE_SECONDS), _sum(grid, t.M_EPOCHS_TRAINED),
                                            _sum(grid, t.M_CLIPS_SEEN))
    score = planning[t.M_SCORE]
    noise = noise_of(data, planning_run, final, grid, margin=margin)
    return Comparison(
        experiment=planning.experiment, planning_run=planning_run, config_hash=planning.config_hash,
        planning_status=planning.status, path=path_steps(data.plan_docs.get(planning_run)),
        score=float(score) if pd.notna(score) else None, planning_cost=planning_cost(data, planning),
        final_run=None if final is None else final.run_id, final_cost=final_cost, evaluation=evaluation,
        hs=best_candidate(grid), grid_cost=grid_cost, grid_runs=len(grid), other_grids=others, noise=noise,
        signal=_signal(planning))


def _signal(planning: pd.Series) -> str:
    """What the planning's V measured, from its params (older stores: top-1)."""
    metric = planning.get("plan_metric") or "top1"
    parts = [str(metric)]
    if planning.get("plan_score"):
        parts.append(str(planning.get("plan_score")))
    clips = planning.get("plan_val_clips")
    if clips:
        parts.append(f"{clips} clip{'s' if str(clips) != '1' else ''}")
    return ", ".join(parts)


def selected_candidate(grid: pd.DataFrame) -> dict[str, Any] | None:
    """HS as a user picks it: the best ``val_top1`` among finished candidates, ties toward
    fewer epochs; None for a grid scored without validation (as earlier versions scored it)."""
    return _best_by(grid, t.M_VAL_TOP1) if t.M_VAL_TOP1 in grid else None


def arm(data: StoreData, runs: pd.DataFrame) -> Arm | None:
    """Finished, evaluated runs of one side (one per seed) as an :class:`Arm`."""
    done = runs[(runs.status == t.STATUS_FINISHED) & runs[t.M_TOP1].notna()]
    if done.empty:
        return None
    ids = tuple(str(r) for r in done.run_id)
    docs = [data.predictions[r] for r in ids if r in data.predictions]
    videos = None
    if len(docs) == len(ids) and paired(docs):
        videos = video_estimate(mean_over_runs(docs))
    return Arm(ids, tuple(float(v) for v in done[t.M_TOP1]), tuple(float(v) for v in done[t.M_SINGLE_VIEW_TOP1]),
               videos, seed_estimate(list(done[t.M_TOP1])))


def noise_of(data: StoreData, planning_run: str, final: pd.Series | None, grid: pd.DataFrame, *,
             margin: float = DEFAULT_MARGIN) -> Noise | None:
    """The seeds, intervals and paired test of one planning against its grid's selected HS."""
    # both sides retrained as the final run was (final.match_steps on or off; docs/design.md §10)
    same = data.retrains.match_steps == (bool(final["match_steps"]) if final is not None else False)
    ops = data.retrains[(data.retrains.kind == t.KIND_OP_RETRAIN) & (data.retrains.plan_run == planning_run) & same]
    op_runs = ops if final is None else pd.concat([final.to_frame().T, ops], ignore_index=True)
    op = arm(data, op_runs) if not op_runs.empty else None
    selected = selected_candidate(grid)
    hs = None
    if selected is not None:
        mine = data.retrains[(data.retrains.kind == t.KIND_HS_RETRAIN) & (data.retrains.schedule == selected["name"])
                             & (data.retrains.config_hash == selected["config_hash"]) & same]
        hs = arm(data, mine)
    scored = grid[(grid.status == t.STATUS_FINISHED) & grid[t.M_TOP1].notna()][t.M_TOP1] if not grid.empty else []
    steps = (final.get(t.M_PLANNED_STEPS), final.get(t.M_STEPS)) if final is not None else (None, None)
    doc = data.plan_docs.get(planning_run)
    diagnosis = doc.diagnosis if doc is not None else None
    if op is None and hs is None and selected is None and diagnosis is None:
        return None
    return Noise(op, hs, selected, _paired(data, op, hs, margin),
                 float(np.mean(scored)) if len(scored) else None, float(np.median(scored)) if len(scored) else None,
                 _finite(steps[0]), _finite(steps[1]), diagnosis)


def _paired(data: StoreData, op: Arm | None, hs: Arm | None, margin: float) -> PairedComparison | None:
    """OP - HS over the held-out videos, each side's per-video correctness averaged over its seeds."""
    if op is None or hs is None:
        return None
    docs = [data.predictions.get(r) for r in (*op.runs, *hs.runs)]
    if any(d is None for d in docs):
        return None
    reason = unpaired_reason(docs)
    if reason is not None:  # refuse, and say why: a paired test over different videos means nothing
        log.warning("no paired test of OP against HS: %s", reason)
        return None
    return paired_compare(mean_over_runs([data.predictions[r] for r in op.runs]),
                          mean_over_runs([data.predictions[r] for r in hs.runs]), delta=margin)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def compare_all(data: StoreData, *, margin: float = DEFAULT_MARGIN) -> list[Comparison]:
    """Every planning of the store, by experiment then start time."""
    ordered = data.plannings.sort_values(["experiment", "start_time"], kind="stable")
    return [compare(data, run_id, margin=margin) for run_id in ordered.run_id]
