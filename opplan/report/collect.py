"""Read what ``opplan report`` shows from the MLflow store into pandas DataFrames.

Runs are found by the ``opplan.*`` tags the stages set (docs/design.md §3, §5, §6), in every
experiment of the store, so that Table 5 can put several datasets/plannings side by
side:

- ``plannings``: one row per planning run (tag ``opplan.kind=planning``);
- ``transitions``: one row per nested transition run of any planning;
- ``finals``: one row per final run, with the evaluation metrics logged on it;
- ``baselines``: one row per hand-tuned candidate of ``<experiment>-baselines``
  (column ``experiment`` is the planning experiment ``<experiment>``);
- ``retrains``: the seeded retrains on the full training set of OP's path (``op_retrain``,
  further seeds beside the final run) and of the validation-selected HS (``hs_retrain``).

Per-epoch curves, the final run's schedule, ``plan.json`` and the per-video predictions
(``predictions.json``: the paired test) are read for the planning the report is about (the
*primary* one) only. Nothing here comes from params or files.
"""

from __future__ import annotations

import ast
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from opplan import tracking as t
from opplan.documents import PlanDocument
from opplan.errors import OpplanError
from opplan.planning import fitting

log = logging.getLogger(__name__)

BASELINES_SUFFIX = t.BASELINES_SUFFIX
EVAL_METRICS = (t.M_TOP1, t.M_TOP5, t.M_MEAN_CLASS_ACC, t.M_SINGLE_VIEW_TOP1)
COST_METRICS = (t.M_EPOCHS_TRAINED, t.M_CLIPS_SEEN, t.M_COMPUTE_SECONDS)
# The planning-noise metrics (V's SE, the DP margin in SEs, the knee cap, a pruned transition's
# bound and bar: docs/design.md §10b) are read when logged.
NOISE_METRICS = (t.M_SCORE_SE, t.M_DP_MARGIN_SE, t.M_CAPPED, t.M_PRUNE_BOUND, t.M_PRUNE_BAR)
TRANSITION_METRICS = (t.M_CHOSEN_EPOCH, t.M_SCORE, t.M_FITTED, t.M_OBSERVED, t.M_KNEE_RMSE, t.M_KNEE_R2,
                      *COST_METRICS, *NOISE_METRICS)
STEP_METRICS = (t.M_PLANNED_STEPS, t.M_STEPS)
FINAL_SCHEDULE = (t.M_CLIP_LENGTH, t.M_LR, t.M_SAMPLING_US, t.M_TRAIN_LOSS, t.M_EPOCH_SECONDS)
CURVE_METRICS = (t.M_VAL_ACC, t.M_VAL_SE, t.M_TRAIN_LOSS)


@dataclass
class StoreData:
    """Everything the report shows, as read from the store."""

    uri: str
    experiment: str  # the experiment the report is about (params' tracking.experiment)
    plannings: pd.DataFrame
    transitions: pd.DataFrame
    finals: pd.DataFrame
    baselines: pd.DataFrame
    retrains: pd.DataFrame = field(default_factory=lambda: _frame([], _RETRAIN_COLUMNS))
    plan_docs: dict[str, PlanDocument | None] = field(default_factory=dict)  # planning run -> plan.json
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> predictions.json (primary's)
    primary: str | None = None  # run id of the planning the report is about
    plan_section: dict[str, Any] = field(default_factory=dict)  # primary's plan.* params as logged
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # transition run -> per-epoch metrics
    final_history: pd.DataFrame | None = None  # the primary's final run, per epoch
    workspace_notes: list[str] = field(default_factory=list)  # plan.json's run missing from the store, ...
    workspace_final: str | None = None  # the final run final/run.json names, when the store holds it


def read_store(uri: str, experiment: str, *, retry_seconds: float = t.DEFAULT_RETRY_SECONDS,
               workspace_plan: str | None = None, workspace_final: str | None = None) -> StoreData:
    """Read the store at ``uri``; the report is about the planning run ``workspace_plan`` (the
    one the workspace's ``plan.json`` names, e.g. after ``dvc exp apply``), else, or when the
    store lacks it (said in the report's notes), ``experiment``'s latest finished planning;
    and about the final run ``workspace_final`` (``final/run.json``'s) when it follows that
    planning, else (said in the notes) the planning's evaluated, finished or latest final run.

    Raises :class:`OpplanError` when the store does not exist or holds no opplan run
    for ``experiment`` (neither a planning nor a baseline).
    """
    readers = t.open_store(uri, retry_seconds=retry_seconds)
    bases = sorted({n.removesuffix(BASELINES_SUFFIX) for n in readers})
    plannings, transitions, finals, baselines, retrains, docs = [], [], [], [], [], {}
    for name in bases:
        reader = readers.get(name)
        rows = [_planning_row(name, run) for run in reader.search({t.TAG_KIND: t.KIND_PLANNING})] if reader else []
        plannings += rows
        for row in rows:
            transitions += [_transition_row(row["run_id"], run, reader)
                            for run in reader.search({t.TAG_KIND: t.KIND_TRANSITION}, parent_id=row["run_id"])]
            docs[row["run_id"]] = _plan_document(reader, row["run_id"])
        if reader is not None:
            finals += [_final_row(name, run) for run in reader.search({t.TAG_KIND: t.KIND_FINAL})]
            retrains += [_retrain_row(name, run) for run in reader.search({t.TAG_KIND: t.KIND_OP_RETRAIN})]
        if name + BASELINES_SUFFIX in readers:
            grid = readers[name + BASELINES_SUFFIX]
            baselines += [_baseline_row(name, run) for run in grid.search({t.TAG_KIND: t.KIND_BASELINE})]
            retrains += [_retrain_row(name, run) for run in grid.search({t.TAG_KIND: t.KIND_HS_RETRAIN})]
    data = StoreData(uri, experiment, _frame(plannings, _PLANNING_COLUMNS), _frame(transitions, _TRANSITION_COLUMNS),
                     _frame(finals, _FINAL_COLUMNS), _frame(baselines, _BASELINE_COLUMNS),
                     _frame(retrains, _RETRAIN_COLUMNS), docs)
    mine = data.plannings[data.plannings.experiment == experiment]
    if mine.empty and (data.baselines.experiment == experiment).sum() == 0:
        known = ", ".join(sorted(set(data.plannings.experiment))) or "none"
        raise OpplanError(f"the MLflow store at {uri} holds no opplan runs for experiment {experiment!r} "
                          f"(experiments with plannings: {known}); run `dvc repro plan` first, or check "
                          f"tracking.experiment in params / --tracking-uri")
    if workspace_plan is not None and workspace_plan not in set(mine.run_id):
        data.workspace_notes.append(
            f"plan.json names planning run `{workspace_plan}`, which experiment `{experiment}` of this store does "
            f"not hold (deleted, or another store's){'' if mine.empty else '; this report shows the latest one'}. "
            f"`dvc repro --force plan` plans again into this store.")
    elif workspace_plan is not None:
        mine = mine[mine.run_id == workspace_plan]
    if not mine.empty:
        _read_primary(data, readers[experiment], mine, workspace_final)
    if experiment + BASELINES_SUFFIX in readers:
        _label_clip_schedules(data, readers[experiment + BASELINES_SUFFIX])
    _read_predictions(data, readers)
    return data


def _plan_document(reader: t.Store, run_id: str) -> PlanDocument | None:
    """The ``plan.json`` artifact of planning run ``run_id``; ``None`` when it has none, or (with a
    warning why) one that is not a valid plan document."""
    obj = reader.read_json_artifact(run_id, t.ARTIFACT_PLAN_JSON)
    if obj is None:
        return None
    try:
        return PlanDocument.from_json(obj, source=f"plan.json of planning run {run_id}")
    except OpplanError as exc:
        log.warning("the report leaves it out: %s", exc)
        return None


# --- rows -------------------------------------------------------------------------------

_PLANNING_COLUMNS = ["experiment", "run_id", "name", "config_hash", "status", "start_time", t.M_SCORE,
                     t.M_EPOCHS_TRAINED, t.M_COMPUTE_SECONDS, "plan_metric", "plan_score", "plan_val_clips"]
_TRANSITION_COLUMNS = ["planning_run", "run_id", "name", "src", "dst", "sampling", "clip_length", "lr", "status",
                       "start_time", *TRANSITION_METRICS, "fit_params"]
_FINAL_COLUMNS = ["experiment", "run_id", "plan_run", "config_hash", "status", "start_time", *COST_METRICS,
                  *EVAL_METRICS, *STEP_METRICS, t.M_HELDOUT_SIGNAL, "match_steps"]
_BASELINE_COLUMNS = ["experiment", "run_id", "name", "sampling", "clip_schedule", "decay", "epochs", "config_hash",
                     "status", "start_time", "clip_lengths", *EVAL_METRICS, t.M_VAL_TOP1, *COST_METRICS]
_RETRAIN_COLUMNS = ["experiment", "kind", "run_id", "plan_run", "schedule", "config_hash", "seed", "match_steps",
                    "status",
                    "start_time", *EVAL_METRICS, *COST_METRICS, t.M_STEPS]


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def _metrics(run: Any, keys: tuple[str, ...]) -> dict[str, float]:
    return {k: run.data.metrics.get(k, math.nan) for k in keys}


def _common(run: Any) -> dict[str, Any]:
    tags = run.data.tags
    return {"run_id": run.info.run_id, "name": run.info.run_name, "status": tags.get(t.TAG_STATUS, ""),
            "start_time": run.info.start_time, "config_hash": tags.get(t.TAG_CONFIG_HASH, "")}


def _planning_row(experiment: str, run: Any) -> dict[str, Any]:
    params = run.data.params  # what V measured: plan.metric, plan.score, plan.val_clips
    return {"experiment": experiment, **_common(run), **_metrics(run, (t.M_SCORE, t.M_EPOCHS_TRAINED,
                                                                       t.M_COMPUTE_SECONDS)),
            "plan_metric": params.get("plan.metric", ""), "plan_score": params.get("plan.score", ""),
            "plan_val_clips": params.get("plan.val_clips", "")}


def _transition_row(planning_run: str, run: Any, reader: t.Store) -> dict[str, Any]:
    tags = run.data.tags
    return {"planning_run": planning_run, **_common(run), "src": tags.get(t.TAG_SRC, ""),
            "dst": tags.get(t.TAG_DST, ""), "sampling": tags.get(t.TAG_SAMPLING, ""),
            "clip_length": _number(tags.get(t.TAG_CLIP_LENGTH)), "lr": _number(tags.get(t.TAG_LR)),
            **_metrics(run, TRANSITION_METRICS), "fit_params": _fit_params(run, reader)}


def _fit_params(run: Any, reader: t.Store) -> tuple[float, ...]:
    """The knee fit's coefficients: the ``fit.json`` artifact, or the ``knee_a<i>`` metrics
    a store written by an older opplan holds instead."""
    if run.data.tags.get(t.TAG_STATUS) == t.STATUS_FINISHED:
        document = reader.read_json_artifact(run.info.run_id, t.ARTIFACT_FIT)
        if document is not None:
            values = list(document.get("coefficients", {}).values())
            return tuple(values) if all(isinstance(v, (int, float)) for v in values) else ()
    params = []
    for i in range(1, fitting.MAX_PARAMS + 1):
        value = run.data.metrics.get(t.M_KNEE_PARAM.format(i))
        if value is None:
            break
        params.append(value)
    return tuple(params)


def _final_row(experiment: str, run: Any) -> dict[str, Any]:
    return {"experiment": experiment, **_common(run), "plan_run": run.data.tags.get(t.TAG_PLAN_RUN, ""),
            **_metrics(run, COST_METRICS), **_metrics(run, EVAL_METRICS), **_metrics(run, STEP_METRICS),
            **_metrics(run, (t.M_HELDOUT_SIGNAL,)), "match_steps": _match_steps(run.data.tags)}


def _match_steps(tags: dict[str, str]) -> bool:
    """Whether a final run or retrain was trained with ``final.match_steps`` (untagged: no)."""
    return tags.get(t.TAG_MATCH_STEPS, "False") == "True"


def _retrain_row(experiment: str, run: Any) -> dict[str, Any]:
    tags = run.data.tags
    return {"experiment": experiment, "kind": tags.get(t.TAG_KIND, ""), **_common(run),
            "plan_run": tags.get(t.TAG_PLAN_RUN, ""), "schedule": tags.get(t.TAG_SCHEDULE, ""),
            "seed": _number(tags.get(t.TAG_SEED)), "match_steps": _match_steps(tags),
            **_metrics(run, EVAL_METRICS), **_metrics(run, COST_METRICS),
            t.M_STEPS: run.data.metrics.get(t.M_STEPS, math.nan)}


def _baseline_row(experiment: str, run: Any) -> dict[str, Any]:
    tags = run.data.tags
    return {"experiment": experiment, **_common(run), "name": tags.get(t.TAG_SCHEDULE, run.info.run_name),
            "sampling": tags.get(t.TAG_SAMPLING, ""), "clip_schedule": tags.get(t.TAG_CLIP_SCHEDULE, ""),
            "decay": tags.get(t.TAG_DECAY, ""), "epochs": _number(tags.get(t.TAG_EPOCHS)), "clip_lengths": "",
            **_metrics(run, EVAL_METRICS), t.M_VAL_TOP1: run.data.metrics.get(t.M_VAL_TOP1, math.nan),
            **_metrics(run, COST_METRICS)}


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


# --- the primary planning -----------------------------------------------------------------


def pick_primary(plannings: pd.DataFrame) -> str:
    """The latest finished planning run, else the latest one (``plannings`` non-empty)."""
    ordered = plannings.sort_values("start_time", kind="stable")
    finished = ordered[ordered.status == t.STATUS_FINISHED]
    return str((finished if not finished.empty else ordered).run_id.iloc[-1])


def pick_final(finals: pd.DataFrame, planning_run: str, preferred: str | None = None) -> pd.Series | None:
    """The final run that follows ``planning_run``: ``preferred`` (the one ``final/run.json``
    names) when it does, else evaluated and finished runs first, then the latest."""
    mine = finals[(finals.plan_run == planning_run) & (finals.status != t.STATUS_KILLED)]
    if mine.empty:
        return None
    if preferred is not None and (mine.run_id == preferred).any():
        return mine[mine.run_id == preferred].iloc[-1]
    rank = mine.assign(_evaluated=mine[t.M_TOP1].notna(), _finished=mine.status == t.STATUS_FINISHED)
    rank = rank.sort_values(["_evaluated", "_finished", "start_time"], kind="stable")
    return rank.drop(columns=["_evaluated", "_finished"]).iloc[-1]


def _read_primary(data: StoreData, reader: t.Store, mine: pd.DataFrame, workspace_final: str | None) -> None:
    data.primary = pick_primary(mine)
    if workspace_final is not None:
        ours = data.finals[(data.finals.plan_run == data.primary) & (data.finals.status != t.STATUS_KILLED)]
        if (ours.run_id == workspace_final).any():
            data.workspace_final = workspace_final
        else:
            data.workspace_notes.append(
                f"final/run.json names final run `{workspace_final}`, which does not follow planning "
                f"`{data.primary}` in this store (deleted, killed, another planning's or another store's)"
                f"{'; this report shows its latest final run' if len(ours) else ''}. "
                f"`dvc repro --force final` retrains it into this store.")
    run = reader.get_run(data.primary)
    data.plan_section = {k.removeprefix("plan."): _literal(v) for k, v in run.data.params.items()
                         if k.startswith("plan.")}
    for run_id in data.transitions.run_id[data.transitions.planning_run == data.primary]:
        data.curves[run_id] = _histories(reader, run_id, CURVE_METRICS)
    final = pick_final(data.finals, data.primary, data.workspace_final)
    if final is not None:
        history = _histories(reader, final.run_id, FINAL_SCHEDULE)
        data.final_history = history if not history.empty else None


def _literal(text: str) -> Any:
    """A param as logged (``str(value)``) back to a Python value where it is a literal."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _histories(reader: t.Store, run_id: str, keys: tuple[str, ...]) -> pd.DataFrame:
    """Per-step metrics of one run: index ``epoch`` (the step), one column per key."""
    series = {key: pd.Series(dict(reader.history(run_id, key)), dtype=float) for key in keys}
    frame = pd.DataFrame(series).sort_index()
    frame.index.name = "epoch"
    return frame


def _label_clip_schedules(data: StoreData, reader: t.Store) -> None:
    """The clip lengths a baseline schedule went through, from one run's per-epoch ``clip_length``."""
    mine = data.baselines[data.baselines.experiment == data.experiment]
    for _, group in mine.groupby(["config_hash", "clip_schedule"], sort=False):
        longest = group.loc[group[t.M_EPOCHS_TRAINED].fillna(-1).idxmax()]
        history = [int(v) for _, v in reader.history(longest.run_id, t.M_CLIP_LENGTH)]
        lengths = list(dict.fromkeys(history))
        if lengths:
            data.baselines.loc[group.index, "clip_lengths"] = "→".join(map(str, lengths))


def _read_predictions(data: StoreData, readers: dict[str, t.Store]) -> None:
    """``predictions.json`` of the runs the primary comparison pairs: the primary's final run,
    its further OP seeds and every HS retrain of the experiment (finished runs only)."""
    wanted: list[tuple[str, str]] = []
    if data.primary is not None:
        final = pick_final(data.finals, data.primary, data.workspace_final)
        if final is not None:
            wanted.append((data.experiment, final.run_id))
        ops = data.retrains[(data.retrains.kind == t.KIND_OP_RETRAIN) & (data.retrains.plan_run == data.primary)]
        wanted += [(data.experiment, r) for r in ops.run_id[ops.status == t.STATUS_FINISHED]]
    hs = data.retrains[(data.retrains.kind == t.KIND_HS_RETRAIN) & (data.retrains.experiment == data.experiment)]
    wanted += [(data.experiment + BASELINES_SUFFIX, r) for r in hs.run_id[hs.status == t.STATUS_FINISHED]]
    for name, run_id in wanted:
        if name in readers:
            doc = readers[name].read_json_artifact(run_id, t.ARTIFACT_PREDICTIONS)
            if doc is not None:
                data.predictions[run_id] = doc
