"""OP against the best hand-tuned strategy (HS), in accuracy and in cost (SPEC §6, §9).

Pure: DataFrames from :mod:`opplan.report.collect` in, :class:`Comparison` out.

- OP's accuracy is the held-out evaluation logged on the final run that follows a
  planning (tag ``opplan.plan_run``); its cost is the planning's compute (every
  explored transition, paper Table 5), with the final retrain reported beside it.
- HS is the best finished candidate of the experiment's baseline grid by top-1, ties
  toward fewer epochs (as ``opplan baselines`` picks it); the grid's cost is the sum
  over all its candidates, failed ones included (they were paid for).
- Baselines carry no planning id. When ``<experiment>-baselines`` holds several grids
  (``opplan.config_hash``), the most recently started one is compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from opplan import tracking as t
from opplan.report.collect import EVAL_METRICS, StoreData, pick_final

SECONDS_PER_HOUR = 3600.0


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
    evaluation: dict[str, float] | None  # top1, top5, mean_class_acc, single_view_top1
    hs: dict[str, Any] | None  # the best candidate's row
    grid_cost: Cost | None
    grid_runs: int
    other_grids: int  # further grids in the baselines experiment, not compared

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


def _ratio(num: float | None, den: float) -> float | None:
    if num is None or not den or not math.isfinite(den):
        return None
    return num / den


def _sum(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].fillna(0).sum())


def path_steps(plan_doc: dict[str, Any] | None) -> tuple[Step, ...] | None:
    """The chosen path of a ``plan.json``; ``None`` when there is none.

    Read from ``path`` (state names, ``S0`` first) and ``epochs`` (per transition), as
    ``PlanResult.to_json`` writes them, or else from ``path_transitions``
    (``{src, dst, epochs}`` items).
    """
    if not plan_doc:
        return None
    if "path" in plan_doc and "epochs" in plan_doc:
        names = list(plan_doc["path"])
        if names and names[0] != "S0":
            names.insert(0, "S0")
        return tuple(Step(a, b, int(e)) for a, b, e in zip(names, names[1:], plan_doc["epochs"]))
    if "path_transitions" in plan_doc:
        steps, src = [], "S0"
        for item in plan_doc["path_transitions"]:
            src = item.get("src", src)
            steps.append(Step(src, item["dst"], int(item["epochs"])))
            src = item["dst"]
        return tuple(steps)
    return None


def current_grid(baselines: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame, int]:
    """The experiment's most recently started grid and how many other grids there are."""
    mine = baselines[baselines.experiment == experiment]
    if mine.empty:
        return mine, 0
    latest = mine.groupby("config_hash", sort=False).start_time.max()
    return mine[mine.config_hash == latest.idxmax()], len(latest) - 1


def best_candidate(grid: pd.DataFrame) -> dict[str, Any] | None:
    """HS: the highest top-1 among finished candidates, ties toward fewer epochs."""
    scored = grid[(grid.status == t.STATUS_FINISHED) & grid[t.M_TOP1].notna()]
    if scored.empty:
        return None
    ranked = scored.assign(_neg_epochs=-scored.epochs.fillna(0)).sort_values(
        [t.M_TOP1, "_neg_epochs"], ascending=False, kind="stable")
    return ranked.drop(columns="_neg_epochs").iloc[0].to_dict()


def planning_cost(data: StoreData, planning: pd.Series) -> Cost:
    """The planning run's totals; for an unfinished planning, the sum over its transitions."""
    mine = data.transitions[(data.transitions.planning_run == planning.run_id)
                            & (data.transitions.status != t.STATUS_KILLED)]  # retrained in another run
    clips = _sum(mine, t.M_CLIPS_SEEN)
    seconds, epochs = planning[t.M_COMPUTE_SECONDS], planning[t.M_EPOCHS_TRAINED]
    if planning.status == t.STATUS_FINISHED and pd.notna(seconds) and pd.notna(epochs):
        return Cost(float(seconds), float(epochs), clips)
    return Cost(_sum(mine, t.M_COMPUTE_SECONDS), _sum(mine, t.M_EPOCHS_TRAINED), clips, partial=True)


def compare(data: StoreData, planning_run: str) -> Comparison:
    """OP of ``planning_run`` against its experiment's HS."""
    planning = data.plannings.set_index("run_id", drop=False).loc[planning_run]
    final = pick_final(data.finals, planning_run)
    evaluation = None
    final_cost = None
    if final is not None:
        final_cost = Cost(*(float(final[k]) if pd.notna(final[k]) else 0.0
                            for k in (t.M_COMPUTE_SECONDS, t.M_EPOCHS_TRAINED, t.M_CLIPS_SEEN)),
                          partial=final.status != t.STATUS_FINISHED)
        if pd.notna(final[t.M_TOP1]):
            evaluation = {k: float(final[k]) for k in EVAL_METRICS if pd.notna(final[k])}
    grid, others = current_grid(data.baselines, planning.experiment)
    grid_cost = None if grid.empty else Cost(_sum(grid, t.M_COMPUTE_SECONDS), _sum(grid, t.M_EPOCHS_TRAINED),
                                            _sum(grid, t.M_CLIPS_SEEN))
    score = planning[t.M_SCORE]
    return Comparison(
        experiment=planning.experiment, planning_run=planning_run, config_hash=planning.config_hash,
        planning_status=planning.status, path=path_steps(data.plan_docs.get(planning_run)),
        score=float(score) if pd.notna(score) else None, planning_cost=planning_cost(data, planning),
        final_run=None if final is None else final.run_id, final_cost=final_cost, evaluation=evaluation,
        hs=best_candidate(grid), grid_cost=grid_cost, grid_runs=len(grid), other_grids=others)


def compare_all(data: StoreData) -> list[Comparison]:
    """Every planning of the store, by experiment then start time."""
    ordered = data.plannings.sort_values(["experiment", "start_time"], kind="stable")
    return [compare(data, run_id) for run_id in ordered.run_id]
