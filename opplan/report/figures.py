"""The report's figures (matplotlib Agg, written atomically):

- the explored transition graph with the chosen path (paper Figures 4/5), drawn by
  :func:`opplan.planning.drawing.draw_graph`, every explored edge labelled ``t* ep / V``;
- every transition's validation curve with its logged fit and knee (Figure 2 style),
  as one small-multiples PNG;
- the final run's schedule: clip length, learning rate and training loss per epoch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opplan import tracking as t
from opplan.errors import OpplanError
from opplan.fileio import atomic_savefig
from opplan.planning import fitting
from opplan.planning.drawing import draw_graph
from opplan.planning.graph import build_graph
from opplan.report.compare import Comparison

log = logging.getLogger(__name__)

COLUMNS = 4  # small multiples per row


def edge_labels(transitions: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(src, dst) -> "t* ep / V"`` for every explored edge (``failed`` when it failed)."""
    labels = {}
    for row in transitions.sort_values("start_time", kind="stable").itertuples():
        if row.status == t.STATUS_FINISHED and not math.isnan(getattr(row, t.M_SCORE)):
            labels[(row.src, row.dst)] = f"{getattr(row, t.M_CHOSEN_EPOCH):.0f}ep / {getattr(row, t.M_SCORE):.3f}"
        else:
            labels.setdefault((row.src, row.dst), row.status or "?")
    return labels


def graph_figure(plan: dict[str, Any], transitions: pd.DataFrame, cmp: Comparison, path: Path) -> Path | None:
    """The graph of the ``plan.*`` params logged on the planning run, with the chosen path."""
    try:
        graph = build_graph(plan["sampling"], plan["clip_lengths"], plan["lrs"], kind=plan.get("graph", "extended"),
                            max_jump=int(plan.get("max_jump", 1)), start_lengths=plan.get("start_lengths"),
                            final_states=plan.get("final_states"))
    except (KeyError, TypeError, OpplanError) as exc:
        log.warning("cannot rebuild the transition graph from the planning run's params: %s", exc)
        return None
    chosen = [s.dst for s in cmp.path] if cmp.path else None
    mine = transitions[transitions.planning_run == cmp.planning_run]
    return draw_graph(graph, path, chosen=chosen, labels=edge_labels(mine))


def _new_figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def curves_figure(transitions: pd.DataFrame, curves: dict[str, pd.DataFrame], cmp: Comparison, function: str,
                  path: Path) -> Path | None:
    """Small multiples: observed val_acc per epoch, the last logged fit ``f``, the knee ``t*``."""
    mine = transitions[(transitions.planning_run == cmp.planning_run) & transitions.run_id.isin(list(curves))]
    mine = mine.sort_values("start_time", kind="stable")
    if mine.empty:
        return None
    on_path = {(s.src, s.dst) for s in cmp.path or ()}
    rows = math.ceil(len(mine) / COLUMNS)
    fig = _new_figure(3.4 * min(COLUMNS, len(mine)), 2.8 * rows + 0.9)
    # one y-scale for the whole figure: noise below one SE must not look like a trend (sharey)
    axes = fig.subplots(rows, min(COLUMNS, len(mine)), squeeze=False, sharey=True)
    for ax, row in zip(axes.flat, mine.itertuples()):
        _curve_panel(ax, row, curves[row.run_id], function, (row.src, row.dst) in on_path)
    for ax in list(axes.flat)[len(mine):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("validation score (fraction)", fontsize=9)
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch of the transition", fontsize=9)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="-", color="0.2", ms=4, label="observed ± 1 SE"),
               Line2D([], [], color="tab:blue", lw=1.4, label=f"{function} fit"),
               Line2D([], [], color="tab:orange", ls="--", lw=1.2, label="kept epoch t*"),
               Line2D([], [], color="tab:red", lw=2.0, label="frame: on the chosen path")]
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"transitions of planning {cmp.config_hash[:8]}", fontsize=11, x=0.02, ha="left")
    # fixed margins: tight_layout costs a second on a few dozen panels
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.8 / height,
                        wspace=0.12, hspace=0.5)
    atomic_savefig(fig, path, dpi=90)
    return path


def _curve_panel(ax: Any, row: Any, curve: pd.DataFrame, function: str, chosen: bool) -> None:
    acc = curve[t.M_VAL_ACC].dropna() if t.M_VAL_ACC in curve else pd.Series(dtype=float)
    se = curve[t.M_VAL_SE].reindex(acc.index) if t.M_VAL_SE in curve else None
    ax.errorbar(acc.index, acc.values, yerr=None if se is None else se.fillna(0).values, fmt="o", ms=3,
                color="0.2", ecolor="0.6", elinewidth=0.8, capsize=1.5)
    params = tuple(row.fit_params)
    if function in fitting.FUNCTIONS and len(params) == fitting.n_params(function) and len(acc):
        grid = np.linspace(0, max(float(acc.index.max()), 1.0), 120)
        ax.plot(grid, fitting.evaluate(function, params, grid), "-", lw=1.2, color="tab:blue")
    t_star = getattr(row, t.M_CHOSEN_EPOCH)
    if not math.isnan(t_star):
        ax.axvline(t_star, color="tab:orange", ls="--", lw=1.2)
    ax.set_title(f"{row.src} → {row.dst}" + ("" if row.status == t.STATUS_FINISHED else f" ({row.status})"),
                 fontsize=9, color="tab:red" if chosen else "black")
    ax.tick_params(labelsize=8)
    for side in ax.spines.values():
        side.set_edgecolor("tab:red" if chosen else "0.6")
        side.set_linewidth(1.6 if chosen else 0.8)


def schedule_figure(history: pd.DataFrame, cmp: Comparison, path: Path) -> Path | None:
    """Clip length, learning rate and training loss per epoch of the final run."""
    panels = [(t.M_CLIP_LENGTH, "clip length (frames)", "steps-post", False),
              (t.M_LR, "learning rate", "steps-post", True), (t.M_TRAIN_LOSS, "train loss", "default", False)]
    panels = [p for p in panels if p[0] in history and history[p[0]].notna().any()]
    if not panels:
        return None
    fig = _new_figure(6.0, 1.8 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, label, style, log_scale) in zip(axes, panels):
        values = history[key].dropna()
        ax.plot(values.index, values.values, drawstyle=style, marker="." if style == "default" else None,
                color="tab:red" if key == t.M_TRAIN_LOSS else "tab:blue")
        ax.set_ylabel(label, fontsize=9)
        if log_scale:
            ax.set_yscale("log")
        if key == t.M_CLIP_LENGTH:  # the lengths trained, as integer ticks, not 7.6-8.4 around a constant
            lengths = sorted({int(v) for v in values.values})
            ax.set_yticks(lengths)
            ax.set_ylim(min(lengths) - 1, max(lengths) + 1)
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("epoch of the final retrain", fontsize=9)
    sampling = ""
    if t.M_SAMPLING_US in history and history[t.M_SAMPLING_US].notna().any():
        sampling = ", uniform sampling" if history[t.M_SAMPLING_US].dropna().iloc[-1] else ", consecutive sampling"
    fig.suptitle(f"final schedule of planning {cmp.config_hash[:8]}{sampling}", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    return path
