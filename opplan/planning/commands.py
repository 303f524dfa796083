"""``opplan graph`` and ``opplan knee``: the planning core for people, without training.

Both read the ``plan:`` section of a params file when there is one (``--params``, else
``./params.yaml`` if it exists, else the defaults) and let options override it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from opplan.config import PlanParams
from opplan.errors import ParamsError
from opplan.params_file import load_params
from opplan.planning.curves import read_curve, read_curves
from opplan.planning.drawing import draw_graph
from opplan.planning.fitting import FUNCTIONS, table1
from opplan.planning.graph import KINDS, TransitionGraph, graph_from_params
from opplan.planning.knee import replay

PAPER_TABLE1 = "paper, 162 curves: RMSE 1.007e-3 .. 1.063e-3, R² 0.320 .. 0.360"


def _plan_params(params_path: str | None, overrides: dict[str, Any]) -> PlanParams:
    """The ``plan:`` section of the params file (or the defaults) with ``overrides`` applied and validated."""
    if params_path is not None:
        plan = load_params(params_path).plan
    elif Path("params.yaml").is_file():
        plan = load_params("params.yaml").plan
    else:
        plan = PlanParams()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return PlanParams.model_validate({**plan.model_dump(), **overrides})
    except ValidationError as exc:
        lines = [f"{'.'.join(['plan', *map(str, e['loc'])])}: {e['msg'].removeprefix('Value error, ')}"
                 for e in exc.errors()]
        raise ParamsError("invalid plan settings (params file and options):\n" + "\n".join(lines)) from None


def _split(kind: type) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
        if value is None:
            return None
        try:
            return [kind(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind.__name__} values, got {value!r}") from None
    return convert


def _describe(graph: TransitionGraph) -> str:
    per = Counter(dst.sampling for _, dst in graph.edges)
    lines = [
        f"{graph.kind} graph, max_jump {graph.max_jump}: {len(graph.states)} states, {len(graph.edges)} edges "
        f"({', '.join(f'{s}: {per[s]}' for s in graph.sampling)})",
        f"start lengths: {', '.join(map(str, graph.start_lengths))}; "
        f"final states: {', '.join(s.name for s in graph.final_states)}",
        *(f"{a.name} -> {b.name}" for a, b in graph.edges),
    ]
    return "\n".join(lines)


@click.command("graph")
@click.option("--params", "params_path", type=click.Path(dir_okay=False),
              help="Params file (default: ./params.yaml if present, else the defaults).")
@click.option("--kind", type=click.Choice(KINDS), help="Transition graph (plan.graph).")
@click.option("--lengths", callback=_split(int), help="Clip lengths, e.g. 16,32,64 (plan.clip_lengths).")
@click.option("--lrs", callback=_split(float), help="Learning rates, e.g. 0.01,0.001,0.0001 (plan.lrs).")
@click.option("--sampling", callback=_split(str), help="Sampling strategies, e.g. cs,us (plan.sampling).")
@click.option("--max-jump", type=click.IntRange(min=1), help="Steps an edge may move per index (plan.max_jump).")
@click.option("--start-lengths", callback=_split(int), help="Clip lengths S0 may go to (plan.start_lengths).")
@click.option("--final", "final_states", callback=_split(str), help="Final states, e.g. cs/64/0.0001.")
@click.option("--json", "as_json", is_flag=True, help="Print {states, edges, final_states} as JSON.")
@click.option("--png", type=click.Path(dir_okay=False), help="Also draw the graph to this PNG file.")
def graph(params_path: str | None, kind: str | None, lengths: list[int] | None, lrs: list[float] | None,
          sampling: list[str] | None, max_jump: int | None, start_lengths: list[int] | None,
          final_states: list[str] | None, as_json: bool, png: str | None) -> None:
    """Print (or draw) the transition graph the plan would explore (docs/design.md §2)."""
    plan = _plan_params(params_path, {"graph": kind, "clip_lengths": lengths, "lrs": lrs, "sampling": sampling,
                                      "max_jump": max_jump, "start_lengths": start_lengths,
                                      "final_states": final_states})
    g = graph_from_params(plan)
    click.echo(json.dumps(g.to_json(), indent=2) if as_json else _describe(g))
    if png:
        draw_graph(g, png)
        click.echo(f"wrote {png}", err=True)


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _replay_text(curve: str, result: Any, plan: PlanParams, n: int) -> str:
    where = (f"stopped at epoch {result.stop_epoch} ({result.reason})" if result.stop_epoch is not None
             else f"the curve ends at epoch {n - 1} before the rule stops")
    lines = [f"{curve}: {n} points (epochs 0..{n - 1}); {plan.fit_function}, delay {plan.delay}, "
             f"max {plan.max_epochs} epochs, horizon {plan.horizon}",
             f"{where}; keep epoch {result.chosen_epoch}"]
    if result.t_star is None:
        lines.append("no successful fit (too few points or a failed fit): the best observed epoch is kept")
    else:
        params = ", ".join(f"a{i}={_fmt(v)}" for i, v in enumerate(result.params, start=1))
        lines += [f"knee t* = {result.t_star}, f(t*) = {_fmt(result.value)}, f(kept) = {_fmt(result.chosen_value)}",
                  f"fit: {params}; RMSE {_fmt(result.rmse, '.3e')}, R² {_fmt(result.r2, '.3f')}"]
    return "\n".join(lines)


@click.command("knee")
@click.argument("curve", required=False, type=click.Path(dir_okay=False))
@click.option("--table", "table_dir", type=click.Path(file_okay=False),
              help="Print Table 1 (mean RMSE and R² of the four functions) over this folder's CSV curves.")
@click.option("--function", type=click.Choice(FUNCTIONS), help="Fitting function (plan.fit_function).")
@click.option("--delay", type=click.IntRange(min=1), help="Delay T (plan.delay).")
@click.option("--max-epochs", type=click.IntRange(min=1), help="Epoch cap (plan.max_epochs).")
@click.option("--horizon", type=click.IntRange(min=1), help="t* is searched in [0, horizon] (plan.horizon).")
@click.option("--params", "params_path", type=click.Path(dir_okay=False),
              help="Params file (default: ./params.yaml if present, else the defaults).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def knee(curve: str | None, table_dir: str | None, function: str | None, delay: int | None,
         max_epochs: int | None, horizon: int | None, params_path: str | None, as_json: bool) -> None:
    """Replay knee-point stopping (docs/design.md §4) on a recorded CURVE.csv (header epoch,val_acc), or --table DIR."""
    if (curve is None) == (table_dir is None):
        raise click.UsageError("give either CURVE.csv or --table DIR")
    plan = _plan_params(params_path, {"fit_function": function, "delay": delay, "max_epochs": max_epochs,
                                      "horizon": horizon})
    if table_dir is not None:
        curves = read_curves(table_dir)
        table = table1(curves)
        if as_json:
            rows = {fn: {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                    for fn, row in table.to_dict(orient="index").items()}
            click.echo(json.dumps({"curves": len(curves), "functions": rows}, indent=2))
        else:
            click.echo(f"Table 1 over {len(curves)} curves in {table_dir} ({PAPER_TABLE1})")
            click.echo(table.to_string(formatters={"rmse": "{:.3e}".format, "r2": "{:.3f}".format}))
        return
    y = read_curve(curve)
    result = replay(y, function=plan.fit_function, delay=plan.delay, max_epochs=plan.max_epochs,
                    horizon=plan.horizon)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else _replay_text(curve, result, plan, len(y)))
