"""The report's opening paragraph and its list of what is missing. Pure text from a
:class:`~opplan.report.compare.Comparison`; every number is one read from the store."""

from __future__ import annotations

from collections.abc import Sequence

from opplan import tracking as t
from opplan.documents import Finding
from opplan.report.collect import StoreData
from opplan.report.compare import Arm, Comparison, Step
from opplan.report.tables import duration, frac, interval, pct, points, verdict_text


def path_text(cmp: Comparison) -> str:
    """``S0 → cs/4/0.1 (5 ep) → cs/8/0.1 (3 ep)``."""
    assert cmp.path is not None
    return steps_text(cmp.path)


def steps_text(steps: Sequence[Step]) -> str:
    """A chosen path's steps as the report writes them: ``S0 → cs/4/0.1 (5 ep) → ...``."""
    return " → ".join(["S0", *(f"{s.dst} ({s.epochs} ep)" for s in steps)])


def _cost(seconds: float, epochs: float) -> str:
    return f"{duration(seconds)}, {epochs:.0f} epochs"


def summary_points(cmp: Comparison | None, experiment: str) -> str:
    """The summary as a Markdown list, one point a line: path, diagnosis, held-out accuracy,
    fidelity, OP against HS with the verdict, the grid, and the cost ratio; says plainly if OP loses."""
    if cmp is None:
        return (f"Experiment `{experiment}` has no planning run yet: there is no chosen path to report "
                f"(run `dvc repro --force plan`: a plain `dvc repro plan` does nothing when DVC sees no "
                f"change, e.g. after the planning run was deleted). Only the hand-tuned grid is shown below.")
    parts = [_path_sentence(cmp), _diagnosis_sentence(cmp), _evaluation_sentence(cmp), _fidelity_sentence(cmp),
             _selected_sentence(cmp), _hs_sentence(cmp), _cost_sentence(cmp)]
    return "\n".join(f"- {p}" for p in parts if p)


def _diagnosis_sentence(cmp: Comparison) -> str:
    """plan.json's no-learning diagnosis (docs/design.md §10), when planning found a problem."""
    diagnosis = cmp.noise.diagnosis if cmp.noise else None
    if diagnosis is None or diagnosis.ok:
        return ""
    said = "; ".join(_finding(f) for f in diagnosis.findings)
    return f"**Planning diagnosis: {said or 'not ok'}.**"


def _finding(finding: Finding) -> str:
    """``code``: what was seen (what to change), from plan.json's diagnosis."""
    text = finding.code
    if finding.seen:
        text += f": {finding.seen}"
    if finding.change:
        text += f" (what to change: {finding.change})"
    return text


def _fidelity_sentence(cmp: Comparison) -> str:
    """The planned V beside what the final model reaches with the same single-view protocol."""
    if cmp.score is None or cmp.evaluation is None or t.M_SINGLE_VIEW_TOP1 not in cmp.evaluation:
        return ""
    signal = cmp.evaluation.get(t.M_HELDOUT_SIGNAL)
    if signal is not None:  # the same metric and protocol on both sides
        text = (f"Planned V {frac(cmp.score)} ({cmp.signal}, internal validation) against {frac(signal)} "
                f"for the final model in the same signal on the held-out split (single-view top-1 "
                f"{pct(cmp.evaluation[t.M_SINGLE_VIEW_TOP1])}%)")
    else:
        text = (f"Planned V {frac(cmp.score)} ({cmp.signal}, internal validation) against "
                f"{pct(cmp.evaluation[t.M_SINGLE_VIEW_TOP1])}% single-view top-1 on the held-out split for the "
                f"final model (another metric unless V is top-1; `opplan evaluate` again gives the same one)")
    noise = cmp.noise
    if noise is not None and noise.planned_steps and noise.final_steps:
        text += (f"; the path took {noise.planned_steps:.0f} optimizer steps while planning and "
                 f"{noise.final_steps:.0f} in the final retrain")
    return text + "."


def _selected_sentence(cmp: Comparison) -> str:
    """OP against HS chosen on validation, over seeds, with the paired verdict."""
    noise = cmp.noise
    if noise is None or noise.hs is None or noise.op is None:
        return ""
    op, hs = noise.op, noise.hs
    return (f"Against HS chosen on internal validation (`{noise.selected['name']}`, retrained like OP), OP reaches "
            f"{_arm_text(op)} and HS {_arm_text(hs)}. {verdict_text(cmp)}")


def _arm_text(arm: Arm) -> str:
    seeds = f" over {len(arm.top1)} seeds (SD {pct(arm.spread)})" if len(arm.top1) > 1 else ""
    where = f" {interval(arm.videos.low, arm.videos.high)}" if arm.videos else ""
    return f"top-1 {pct(arm.mean)}%{where}{seeds}"


def _path_sentence(cmp: Comparison) -> str:
    where = f"Planning `{cmp.config_hash[:8]}` (MLflow run `{cmp.planning_run}`, experiment `{cmp.experiment}`)"
    if cmp.path is None:
        return (f"{where} has not finished (status {cmp.planning_status or 'unknown'}; no plan.json): "
                f"there is no chosen path yet.")
    score = f", planned score V = {frac(cmp.score, 4)} (a fraction, as MLflow logs it)" if cmp.score is not None else ""
    return f"{where} chose the path {path_text(cmp)}: {cmp.path_epochs} epochs in total{score}."


def _evaluation_sentence(cmp: Comparison) -> str:
    if cmp.final_run is None:
        return "The model has not been retrained along the path yet (no final run): no held-out accuracy."
    e = cmp.evaluation
    if e is None:
        return (f"The final run `{cmp.final_run}` has not been evaluated yet: no held-out accuracy "
                f"(run `dvc repro evaluate`).")
    single = f" (single view top-1 {pct(e[t.M_SINGLE_VIEW_TOP1])}%)" if t.M_SINGLE_VIEW_TOP1 in e else ""
    return (f"Retrained along it and tested on the held-out split with multi-view testing, OP reaches top-1 "
            f"{pct(e.get(t.M_TOP1))}%, top-5 {pct(e.get(t.M_TOP5))}%, mean class accuracy "
            f"{pct(e.get(t.M_MEAN_CLASS_ACC))}%{single}.")


def _hs_sentence(cmp: Comparison) -> str:
    if cmp.hs is None:
        if cmp.grid_runs == 0:
            return "No hand-tuned baselines are in the store (run `dvc repro baselines`): OP is not compared."
        return f"None of the {cmp.grid_runs} hand-tuned candidates finished with an evaluation: OP is not compared."
    hs = (f"The best hand-tuned strategy (HS) of the {cmp.grid_runs}-candidate grid on the test split itself "
          f"(the paper's oracle view) is `{cmp.hs['name']}` with top-1 {pct(cmp.hs_top1)}%")
    if cmp.delta is None:
        return hs + "."
    if cmp.noise is not None and cmp.noise.selected is not None:
        # Candidates scored on internal validation were trained on internal train only, OP's final
        # on the whole training set (docs/design.md §10): their difference is mostly data, not schedule.
        return (f"{hs}, trained on internal train only and so not comparable with OP's retrain on the whole "
                f"training set ({points(cmp.delta)} points): the like-for-like comparison is the verdict above.")
    if cmp.delta < 0:
        return f"{hs}: **OP loses to HS by {points(-cmp.delta).lstrip('+')} points top-1.**"
    if cmp.delta == 0:
        return f"{hs}: OP ties with HS on top-1."
    return f"{hs}: OP beats HS by {points(cmp.delta).lstrip('+')} points top-1."


def _cost_sentence(cmp: Comparison) -> str:
    op = cmp.planning_cost
    partial = " (partial: the planning has not finished)" if op.partial else ""
    text = f"Planning cost {_cost(op.seconds, op.epochs)}{partial}"
    if cmp.grid_cost is None:
        return text + "; there is no grid to compare it with."
    grid = cmp.grid_cost
    text += f", the grid search {_cost(grid.seconds, grid.epochs)}"
    if cmp.ratio_seconds is None or cmp.ratio_epochs is None:
        return text + "."
    ratio = f"OP : grid = 1 : {cmp.ratio_seconds:.1f} in compute time and 1 : {cmp.ratio_epochs:.1f} in epochs"
    if cmp.ratio_seconds < 1:
        return f"{text}: {ratio}, **planning cost more than the whole grid search**."
    return f"{text}: {ratio} (the paper reports 7–14× cheaper)."


def missing_notes(data: StoreData, cmp: Comparison | None) -> list[str]:
    """What the store does not hold yet (or holds more than once), one sentence each."""
    notes = list(data.workspace_notes)
    if cmp is None:
        notes.append(f"No planning run in experiment `{data.experiment}`.")
        return notes
    if cmp.path is None:
        notes.append("The planning has not finished: no plan.json artifact, no chosen path, no graph figure.")
    if cmp.final_run is None:
        notes.append("No final run follows this planning (`dvc repro final`).")
    elif cmp.evaluation is None:
        notes.append("The final run has no evaluation metrics (`dvc repro evaluate`).")
    if cmp.grid_runs == 0:
        notes.append(f"No baselines in `{data.experiment}-baselines` (`dvc repro baselines`): no Table 3, "
                     "no HS in Table 5.")
    transitions = data.transitions
    capped = transitions[(transitions.planning_run == cmp.planning_run)
                         & (transitions[t.M_CAPPED].fillna(0) > 0)] if t.M_CAPPED in transitions else []
    if len(capped):
        names = ", ".join(f"{s} → {d}" for s, d in zip(capped.src, capped.dst))
        notes.append(f"{len(capped)} transition(s) stopped at plan.max_epochs while still rising: {names}.")
    pruned = transitions[(transitions.planning_run == cmp.planning_run)
                         & transitions[t.M_PRUNE_BOUND].notna()] if t.M_PRUNE_BOUND in transitions else []
    if len(pruned):
        saved = ", ".join(f"{s} → {d} after {e:.0f} epochs" for s, d, e in
                          zip(pruned.src, pruned.dst, pruned[t.M_EPOCHS_TRAINED]))
        notes.append(f"{len(pruned)} transition(s) pruned (plan.prune: their bound could not reach the best V "
                     f"into their state): {saved}.")
    if cmp.other_grids:
        notes.append(f"`{data.experiment}-baselines` holds {cmp.other_grids} older grid(s) (other config hashes); "
                     "only the most recent grid is compared.")
    others = data.plannings[(data.plannings.experiment == data.experiment)
                            & (data.plannings.run_id != cmp.planning_run)]
    if not others.empty:
        notes.append(f"{len(others)} other planning run(s) in `{data.experiment}` appear in Table 5 only; "
                     "this report details the latest finished one.")
    return notes
