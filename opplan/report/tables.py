"""The paper's tables from the store's DataFrames. Pure: no I/O.

Each :class:`Table` holds the raw numbers (``data``: the CSV, accuracies as fractions,
full precision) and their formatted view (``display``: Markdown and LaTeX,
accuracies in % as in the paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opplan import stats
from opplan import tracking as t
from opplan.planning import fitting
from opplan.planning.graph import State
from opplan.report.collect import NOISE_METRICS
from opplan.report.compare import Arm, Comparison, Cost, current_grid

DASH = "–"
SAMPLING_NAMES = {"cs": "consecutive", "us": "uniform"}
SCHEDULE_NAMES = {"l1-lN": "l1→lN", "l2-lN": "l2→lN", "all": "l1→…→lN"}
SCHEDULE_ORDER = ["l1-lN", "l2-lN", "all"]
DECAY_NAMES = {"step": "3-step", "cosine": "cosine"}
COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Table:
    key: str  # file stem of the CSV, LaTeX label
    title: str
    data: pd.DataFrame  # raw values
    display: pd.DataFrame  # formatted strings; the index is the first column when named
    note: str = ""


# --- formatting ---------------------------------------------------------------------------


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: float | None, digits: int = 1) -> str:
    """An accuracy fraction as a percentage: ``0.6172 -> "61.7"``."""
    return DASH if missing(x) else f"{100 * x:.{digits}f}"


def frac(x: float | None, digits: int = 3) -> str:
    """A validation score as the fraction MLflow logs and the figures draw: ``0.77778 -> "0.778"``
    (V, its SE and the knee's f(t*), y(t*); accuracies on the held-out split are in %)."""
    return DASH if missing(x) else f"{x:.{digits}f}"


def points(delta: float | None) -> str:
    """A difference of fractions in percentage points, signed: ``"+0.7"``, ``"−1.2"``."""
    if missing(delta):
        return DASH
    text = f"{100 * delta:+.1f}"
    return text.replace("-", "−")


def duration(seconds: float) -> str:
    """Hours with seconds beside them: ``"0.20 h (720 s)"``."""
    hours = seconds / 3600.0
    shown = f"{hours:.2f}" if hours < 100 else f"{hours:.0f}"
    return f"{shown} h ({seconds:.0f} s)"


def cost_text(cost: Cost | None) -> str:
    if cost is None:
        return DASH
    text = f"{duration(cost.seconds)}, {cost.epochs:.0f} ep"
    return text + " (partial)" if cost.partial else text


def times(x: float | None) -> str:
    return DASH if missing(x) else f"{x:.1f}×"


def schedule_label(schedule: str, lengths: str = "") -> str:
    name = SCHEDULE_NAMES.get(schedule, schedule)
    return f"{name} ({lengths})" if lengths else name


def path_lengths(cmp: Comparison) -> str:
    """The clip lengths along OP's path (training epochs only): ``"4→8→16"``."""
    if not cmp.path:
        return DASH
    lengths = [str(State.parse(s.dst).clip_length) for s in cmp.path if s.epochs > 0]
    runs = [x for i, x in enumerate(lengths) if i == 0 or x != lengths[i - 1]]  # 4,4,8,16,8 -> 4,8,16,8
    return "→".join(runs) or DASH


def path_sampling(cmp: Comparison) -> str:
    return State.parse(cmp.path[-1].dst).sampling if cmp.path else ""


# --- Table 3: hand-tuned strategies against OP ---------------------------------------------


def table3(baselines: pd.DataFrame, cmp: Comparison | None, experiment: str) -> Table:
    """Best top-1 (best epoch count) of each sampling x clip schedule x decay, and OP."""
    grid, _ = current_grid(baselines, experiment)
    rows: list[dict[str, Any]] = []
    for (sampling, schedule, decay), group in grid.groupby(["sampling", "clip_schedule", "decay"], sort=False):
        best = stats.best_candidate(group.to_dict("records"), t.M_TOP1, t.STATUS_FINISHED)
        rows.append({"method": "HS", "sampling": sampling, "clip_schedule": schedule,
                     "clip_lengths": group.clip_lengths.iloc[0], "decay": decay,
                     "top1": math.nan if best is None else best[t.M_TOP1],
                     "epochs": math.nan if best is None else best["epochs"],
                     "candidates": len(group), "failed": int((group.status == t.STATUS_FAILED).sum()),
                     "run_id": "" if best is None else best["run_id"]})
    if cmp is not None:
        rows.append({"method": "OP", "sampling": path_sampling(cmp), "clip_schedule": "planned",
                     "clip_lengths": path_lengths(cmp), "decay": "planned",
                     "top1": math.nan if cmp.op_top1 is None else cmp.op_top1,
                     "epochs": math.nan if cmp.path_epochs is None else cmp.path_epochs,
                     "candidates": 1, "failed": 0, "run_id": cmp.final_run or ""})
    data = pd.DataFrame(rows, columns=["method", "sampling", "clip_schedule", "clip_lengths", "decay", "top1",
                                       "epochs", "candidates", "failed", "run_id"])
    return Table("table3", f"Table 3: hand-tuned strategies (HS) vs. optimization planning (OP), {experiment}",
                 data, _table3_display(data),
                 "Top-1 (%) on the held-out split; in brackets the best number of epochs (HS: over the epoch "
                 "grid; OP: along the planned path). Bold: the best HS.")


def _table3_display(data: pd.DataFrame) -> pd.DataFrame:
    hs = data[data.method == "HS"]
    decays = [d for d in DECAY_NAMES if d in set(hs.decay)] + sorted(set(hs.decay) - set(DECAY_NAMES))
    best_top1 = hs.top1.max() if hs.top1.notna().any() else None
    rows = []
    order = {s: i for i, s in enumerate(SCHEDULE_ORDER)}
    keys = sorted({(s, c) for s, c in zip(hs.sampling, hs.clip_schedule)},
                  key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    for sampling, schedule in keys:
        cells = hs[(hs.sampling == sampling) & (hs.clip_schedule == schedule)]
        row = {"Method": "HS", "Sampling": SAMPLING_NAMES.get(sampling, sampling),
               "Clip length": schedule_label(schedule, cells.clip_lengths.iloc[0])}
        for decay in decays:
            cell = cells[cells.decay == decay]
            row[DECAY_NAMES.get(decay, decay)] = _hs_cell(cell.iloc[0] if not cell.empty else None, best_top1)
        row["planned"] = ""
        rows.append(row)
    for _, op in data[data.method == "OP"].iterrows():
        rows.append({"Method": "OP", "Sampling": SAMPLING_NAMES.get(op.sampling, op.sampling or DASH),
                     "Clip length": op.clip_lengths, **{DECAY_NAMES.get(d, d): "" for d in decays},
                     "planned": _cell(op.top1, op.epochs)})
    columns = ["Method", "Sampling", "Clip length", *(DECAY_NAMES.get(d, d) for d in decays), "planned"]
    return pd.DataFrame(rows, columns=columns)


def _cell(top1: float, epochs: float) -> str:
    if missing(top1):
        return "not evaluated" if not missing(epochs) else DASH
    return f"{pct(top1)} ({epochs:.0f})" if not missing(epochs) else pct(top1)


def _hs_cell(row: pd.Series | None, best: float | None) -> str:
    if row is None:
        return DASH
    if missing(row.top1):
        return "failed" if row.failed == row.candidates else DASH
    text = _cell(row.top1, row.epochs)
    return f"**{text}**" if best is not None and row.top1 == best else text


# --- Table 5: OP vs the best HS per planning ------------------------------------------------

TABLE5_ROWS = ["HS oracle: best on the test split", "HS oracle top-1", "HS grid cost", "OP top-1 (Δ vs oracle)",
               "HS chosen on validation: top-1 over seeds", "OP top-1 over seeds", "OP vs HS chosen on validation",
               "OP planning cost", "OP final retrain", "cost ratio grid : OP (time)", "cost ratio grid : OP (epochs)"]


def table5(comparisons: list[Comparison]) -> Table:
    """One column per planning of the store: HS and OP accuracy and cost, and the cost ratio."""
    data = pd.DataFrame([_table5_record(c) for c in comparisons])
    display = pd.DataFrame({f"{c.experiment} ({c.config_hash[:8]})": _table5_column(c) for c in comparisons},
                           index=pd.Index(TABLE5_ROWS, name="Strategy"))
    return Table("table5", "Table 5: OP vs. the best hand-tuned strategy, per dataset/planning", data, display,
                 "Top-1 in %, Δ in points against the oracle HS (the paper's view: the best candidate on the "
                 "held-out split itself). HS chosen on validation and OP: mean over seeds, 95% interval over the "
                 "held-out videos; their verdict is the paired test. Costs: training compute (wall-clock hours, "
                 "seconds, epochs); OP's is the planning (every explored transition), the grid's the sum over all "
                 "candidates.")


def _table5_record(c: Comparison) -> dict[str, Any]:
    nan = math.nan

    def cost(prefix: str, value: Cost | None) -> dict[str, float]:
        return {f"{prefix}_seconds": value.seconds if value else nan, f"{prefix}_epochs": value.epochs if value else nan,
                f"{prefix}_clips": value.clips if value else nan}

    hs = c.hs or {}
    return {"experiment": c.experiment, "planning_run": c.planning_run, "config_hash": c.config_hash,
            "hs_name": hs.get("name", ""), "hs_top1": hs.get(t.M_TOP1, nan), "hs_epochs": hs.get("epochs", nan),
            "grid_runs": c.grid_runs, **cost("grid", c.grid_cost),
            "op_top1": nan if c.op_top1 is None else c.op_top1, "op_delta": nan if c.delta is None else c.delta,
            "op_epochs": nan if c.path_epochs is None else c.path_epochs,
            **cost("planning", c.planning_cost), "planning_partial": c.planning_cost.partial,
            **cost("final", c.final_cost),
            "ratio_seconds": nan if c.ratio_seconds is None else c.ratio_seconds,
            "ratio_epochs": nan if c.ratio_epochs is None else c.ratio_epochs, **_noise_record(c)}


def _noise_record(c: Comparison) -> dict[str, Any]:
    """The validation-selected HS, both sides over seeds and the paired test, for the CSV."""
    nan = math.nan
    noise = c.noise
    op, hs = (noise.op, noise.hs) if noise else (None, None)
    paired = noise.paired if noise else None
    return {"hs_selected_name": (noise.selected or {}).get("name", "") if noise else "",
            "hs_selected_top1": hs.mean if hs else nan, "hs_seeds": len(hs.top1) if hs else 0,
            "op_seeds_top1": op.mean if op else nan, "op_seeds": len(op.top1) if op else 0,
            "paired_diff": paired.diff if paired else nan, "paired_low": paired.low if paired else nan,
            "paired_high": paired.high if paired else nan, "verdict": paired.verdict if paired else ""}


def _table5_column(c: Comparison) -> list[str]:
    if c.hs is not None:
        hs_name, hs_top1 = c.hs["name"], f"{pct(c.hs_top1)} ({c.hs['epochs']:.0f} ep)"
    else:
        hs_name = hs_top1 = "no baselines" if c.grid_runs == 0 else "no finished candidate"
    grid = f"{cost_text(c.grid_cost)}, {c.grid_runs} runs" if c.grid_cost else DASH
    if c.op_top1 is not None:
        op = f"{pct(c.op_top1)} ({points(c.delta)})" if c.delta is not None else pct(c.op_top1)
    else:
        op = "not evaluated" if c.final_run else "no final run"
    noise = c.noise
    hs_seeds = _seeds_text(noise.hs if noise else None)
    op_seeds = _seeds_text(noise.op if noise else None)
    verdict = noise.verdict if noise and noise.verdict else DASH
    return [hs_name, hs_top1, grid, op, hs_seeds, op_seeds, verdict, cost_text(c.planning_cost),
            cost_text(c.final_cost), times(c.ratio_seconds), times(c.ratio_epochs)]


def _seeds_text(arm: Arm | None) -> str:
    """``"51.0 [44.0, 58.0], 2 seeds"``: the mean over seeds and the interval over videos."""
    if arm is None:
        return DASH
    where = f" {interval(arm.videos.low, arm.videos.high)}" if arm.videos else ""
    return f"{pct(arm.mean)}{where}, {len(arm.top1)} seed{'s' if len(arm.top1) > 1 else ''}"


# --- the honest comparison (docs/design.md §10) -------------------------------------------------------

COMPARISON_COLUMNS = ["row", "top1", "low", "high", "seeds", "seed_sd", "chosen_on", "compute_seconds", "name"]


def interval(low: float | None, high: float | None) -> str:
    return DASH if missing(low) or missing(high) else f"[{pct(low)}, {pct(high)}]"


def _arm_row(label: str, arm: Arm | None, chosen_on: str, seconds: float | None, name: str) -> dict[str, Any]:
    nan = math.nan
    if arm is None:
        return {"row": label, "top1": nan, "low": nan, "high": nan, "seeds": 0, "seed_sd": nan,
                "chosen_on": chosen_on, "compute_seconds": nan if seconds is None else seconds, "name": name}
    low, high = (arm.videos.low, arm.videos.high) if arm.videos else (arm.seeds.low, arm.seeds.high)
    return {"row": label, "top1": arm.mean, "low": low, "high": high, "seeds": len(arm.top1), "seed_sd": arm.spread,
            "chosen_on": chosen_on, "compute_seconds": nan if seconds is None else seconds, "name": name}


def comparison_table(cmp: Comparison) -> Table:
    """OP against HS chosen on validation (both retrained over seeds), the oracle HS and the
    grid's mean and median; the paired test's verdict in the note."""
    noise = cmp.noise
    assert noise is not None
    grid_seconds = cmp.grid_cost.seconds if cmp.grid_cost else None
    oracle = cmp.hs or {}
    rows = [
        _arm_row("OP: planned path, retrained", noise.op, "internal validation (planning)",
                 cmp.planning_cost.seconds, path_lengths(cmp)),
        _arm_row("HS: chosen on validation, retrained", noise.hs, "internal validation", grid_seconds,
                 (noise.selected or {}).get("name", "")),
        {"row": "HS oracle: best on the test split (paper's view)", "top1": oracle.get(t.M_TOP1, math.nan),
         "low": math.nan, "high": math.nan, "seeds": 1 if oracle else 0, "seed_sd": math.nan,
         "chosen_on": "the test split itself", "compute_seconds": math.nan, "name": oracle.get("name", "")},
        {"row": "HS grid: mean of the candidates", "top1": _or_nan(noise.grid_mean), "low": math.nan,
         "high": math.nan, "seeds": 0, "seed_sd": math.nan, "chosen_on": "none", "compute_seconds": math.nan,
         "name": f"{cmp.grid_runs} candidates"},
        {"row": "HS grid: median of the candidates", "top1": _or_nan(noise.grid_median), "low": math.nan,
         "high": math.nan, "seeds": 0, "seed_sd": math.nan, "chosen_on": "none", "compute_seconds": math.nan,
         "name": f"{cmp.grid_runs} candidates"},
    ]
    data = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    display = pd.DataFrame({
        "Strategy": data.row, "Schedule": data.name, "Top-1": [pct(v) for v in data.top1],
        "95% interval": [interval(a, b) for a, b in zip(data.low, data.high)],
        "Seeds": [str(v) if v else DASH for v in data.seeds], "SD over seeds": [pct(v) for v in data.seed_sd],
        "Chosen on": data.chosen_on, "Compute": [DASH if missing(v) else duration(v) for v in data.compute_seconds],
    })
    return Table("comparison", "OP vs. HS chosen as a user would (docs/design.md §10)", data, display,
                 f"{verdict_text(cmp)} Top-1 in % on the held-out split, the mean over seeds; the interval is over the "
                 "held-out videos (each video's correctness averaged over the seeds). The oracle and the grid's "
                 "candidates are trained on internal train only and scored once. Compute: OP's planning, the grid's "
                 "candidates (retrains not counted on either side).")


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def verdict_text(cmp: Comparison) -> str:
    """One line: the verdict of OP against the validation-selected HS at the report's margin δ."""
    noise = cmp.noise
    if noise is None or noise.paired is None:
        if noise is not None and noise.selected is None and cmp.grid_runs:
            return "No verdict: the grid was scored without internal validation (rerun `opplan baselines`)."
        return "No verdict: OP or the selected HS has no per-video predictions to pair."
    p = noise.paired
    mcnemar = f", McNemar p = {p.p_mcnemar:.2f}" if p.p_mcnemar is not None else ""
    return (f"Verdict at δ = {100 * p.delta:g} points: **{VERDICT_WORDS[p.verdict]}** (OP − HS = {points(p.diff)} "
            f"points, 95% interval [{points(p.low)}, {points(p.high)}], paired over {p.n} videos, "
            f"bootstrap p = {p.p_bootstrap:.2f}{mcnemar}).")


VERDICT_WORDS = {"better": "OP better", "non-inferior": "OP non-inferior", "worse": "OP worse",
                 "inconclusive": "inconclusive"}
"""How :func:`opplan.stats.verdict` reads in a sentence: "non-inferior" is OP at most δ worse
than HS (the interval's low end above −δ), "inconclusive" an interval holding 0 and reaching
below −δ."""


# --- the transitions (Figure 4's numbers) -----------------------------------------------------


def transitions_table(transitions: pd.DataFrame, cmp: Comparison) -> Table:
    """Every explored edge of the planning, in the order it was explored."""
    mine = transitions[transitions.planning_run == cmp.planning_run].sort_values("start_time", kind="stable")
    path = {(s.src, s.dst) for s in cmp.path or ()}
    data = pd.DataFrame({
        "src": mine.src, "dst": mine.dst, "status": mine.status, "epochs_trained": mine[t.M_EPOCHS_TRAINED],
        "knee_t": mine[t.M_CHOSEN_EPOCH], "fitted": mine[t.M_FITTED], "observed": mine[t.M_OBSERVED],
        "V": mine[t.M_SCORE], "knee_rmse": mine[t.M_KNEE_RMSE], "knee_r2": mine[t.M_KNEE_R2],
        "compute_seconds": mine[t.M_COMPUTE_SECONDS], "clips_seen": mine[t.M_CLIPS_SEEN],
        "on_path": [(s, d) in path and st == t.STATUS_FINISHED for s, d, st in zip(mine.src, mine.dst, mine.status)],
        "run_id": mine.run_id,
        **{k: mine[k] for k in NOISE_METRICS if k in mine},
    }).reset_index(drop=True)
    display = pd.DataFrame({
        "Transition": [f"{s} → {d}" for s, d in zip(data.src, data.dst)], "Status": data.status,
        "Epochs": [_int(v) for v in data.epochs_trained], "t*": [_int(v) for v in data.knee_t],
        "Fitted f(t*)": [frac(v, 4) for v in data.fitted], "Observed y(t*)": [frac(v, 4) for v in data.observed],
        "V": [frac(v, 4) for v in data.V], "RMSE": [_sci(v) for v in data.knee_rmse],
        "R²": [_fixed(v) for v in data.knee_r2], "Seconds": [_fixed(v, 0) for v in data.compute_seconds],
        "On path": ["yes" if v else "" for v in data.on_path],
    })
    if t.M_SCORE_SE in data and data[t.M_SCORE_SE].notna().any():  # planning with per-transition SEs
        display.insert(display.columns.get_loc("V") + 1, "± SE", [frac(v, 4) for v in data[t.M_SCORE_SE]])
    if t.M_DP_MARGIN_SE in data and data[t.M_DP_MARGIN_SE].notna().any():
        display["DP margin (SE)"] = [_fixed(v, 1) for v in data[t.M_DP_MARGIN_SE]]
    if t.M_CAPPED in data and (data[t.M_CAPPED].fillna(0) > 0).any():
        display["Capped"] = ["capped" if v and v > 0 else "" for v in data[t.M_CAPPED]]
    if t.M_PRUNE_BOUND in data and data[t.M_PRUNE_BOUND].notna().any():  # plan.prune stopped some
        display["Pruned: bound < bar"] = [f"{frac(b, 4)} < {frac(r, 4)}" if pd.notna(b) else ""
                                          for b, r in zip(data[t.M_PRUNE_BOUND], data[t.M_PRUNE_BAR])]
    note = ("Epochs: trained in the transition; t*: the knee, the epoch kept (its contribution to the path); "
            "fitted, observed, V and its SE as fractions, as MLflow logs them and the figures draw them.")
    if "DP margin (SE)" in display:
        note += (" DP margin: the chosen incoming transition's V minus the runner-up's, in standard errors of "
                 "the difference (below about 2: a coin flip).")
    if "Capped" in display:
        note += " Capped: stopped by plan.max_epochs while the curve still rose."
    return Table("transitions", f"Transitions explored by planning {cmp.config_hash[:8]} (Figure 4)", data, display,
                 note)


def _int(v: float) -> str:
    return DASH if missing(v) else f"{v:.0f}"


def _fixed(v: float, digits: int = 2) -> str:
    return DASH if missing(v) else f"{v:.{digits}f}"


def _sci(v: float) -> str:
    return DASH if missing(v) else f"{v:.1e}"


# --- Table 1: the fitting functions on the store's curves -----------------------------------


def finished_curves(transitions: pd.DataFrame, curves: dict[str, pd.DataFrame], planning_run: str
                    ) -> dict[str, list[float]]:
    """``y_0 .. y_t`` of every finished transition of the planning (NaN where an epoch is missing)."""
    mine = transitions[(transitions.planning_run == planning_run) & (transitions.status == t.STATUS_FINISHED)]
    out = {}
    for run_id in mine.run_id:
        frame = curves.get(run_id)
        if frame is None or t.M_VAL_ACC not in frame or frame[t.M_VAL_ACC].dropna().empty:
            continue
        acc = frame[t.M_VAL_ACC].dropna()
        out[run_id] = acc.reindex(np.arange(int(acc.index.max()) + 1)).tolist()
    return out


def table1(curves: dict[str, list[float]], used: str = "") -> Table:
    """Mean RMSE and R² of each fitting family refitted on every curve (paper Table 1)."""
    result = fitting.table1(curves)
    data = result.reset_index().assign(curves=len(curves))
    display = pd.DataFrame({
        "Function": [f"{f} (used)" if f == used else f for f in data.function],
        "RMSE": [_sci(v) for v in data.rmse], "R²": [_fixed(v) for v in data.r2],
        "Curves fitted": [f"{a} / {len(curves)}" for a in data.fitted],
    })
    return Table("table1", f"Table 1: the {COUNT_WORDS[len(fitting.FUNCTIONS)]} fitting functions on this store's curves", data, display,
                 "Each finished transition's whole validation-accuracy curve refitted with each function; "
                 "means over the curves a function could fit (the paper, over 162 curves: RMSE ≈ 1.0e-3, "
                 "R² ≈ 0.32–0.36).")
