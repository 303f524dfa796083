"""``opplan report``: paper-style tables and figures built only from the MLflow store.

- :mod:`opplan.report.collect`: the store -> DataFrames (planning, transition, final,
  baseline runs; curves; ``plan.json``);
- :mod:`opplan.report.compare`: OP against HS (chosen on validation, and the oracle), accuracy,
  seeds, the paired test and cost;
- :mod:`opplan.report.tables`: Tables 1, 3, 5 and the transitions (pure);
- :mod:`opplan.report.summary`: the opening paragraph and the list of missing pieces;
- :mod:`opplan.report.figures`: graph with the chosen path, curves with fits, final schedule;
- :mod:`opplan.report.render`: Markdown, LaTeX and CSV writers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from opplan import tracking as t
from opplan.config import Params
from opplan.documents import D, FinalRecord, PlanDocument
from opplan.errors import OpplanError
from opplan.report import figures as fig
from opplan.report.collect import StoreData, read_store
from opplan.report.compare import Comparison, compare, compare_all, current_grid
from opplan.report.render import write_markdown, write_tables
from opplan.report.summary import missing_notes, summary_points
from opplan.report.tables import Table, comparison_table, finished_curves, table1, table3, table5, transitions_table

__all__ = ["run_report"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.md"
FIGURES_DIR = "figures"
FIGURE_NAMES = ("graph.png", "transitions.png", "final_schedule.png")


def run_report(params: Params, *, tracking_uri: str | None = None, out: str | None = None) -> Path:
    """Write ``report.md``, ``tables.tex``, ``<table>.csv`` and ``figures/*.png`` into ``out``
    (default ``params.report.out``) from the store at ``tracking_uri`` (default: params'
    / ``MLFLOW_TRACKING_URI``). Returns the Markdown report's path.

    Raises :class:`~opplan.errors.OpplanError` when the store does not exist or holds no
    run of ``params.tracking.experiment``; anything else missing is said in the report.
    """
    uri = t.resolve_read_uri(tracking_uri, params.tracking.uri)
    out_dir = Path(out or params.report.out)
    data = read_store(uri, params.tracking.experiment, retry_seconds=params.tracking.retry_seconds,
                      workspace_plan=workspace_planning_run(Path("plan.json")),
                      workspace_final=workspace_final_run(Path("final") / "run.json"))
    margin = params.report.margin / 100
    primary = compare(data, data.primary, margin=margin) if data.primary else None
    tables = _tables(data, primary, margin)
    figures = _figures(data, primary, out_dir / FIGURES_DIR) if params.report.figures else []
    notes = missing_notes(data, primary)
    if not params.report.figures:
        notes.append("Figures are switched off in params (report.figures: false).")
    write_tables(tables, out_dir)
    path = write_markdown(out_dir / REPORT_NAME, title=f"opplan report: {data.experiment}",
                          source=f"*Every number below is read from the MLflow store `{uri}`.*",
                          summary=summary_points(primary, data.experiment), tables=tables, figures=figures,
                          notes=notes)
    log.info("report written to %s (%d tables, %d figures)", path, len(tables), len(figures))
    return path


def workspace_planning_run(plan_json: Path) -> str | None:
    """The planning run the workspace's ``plan.json`` names (``None`` without a readable one)."""
    document = _workspace_document(PlanDocument, plan_json)
    return document.planning_run_id if document is not None else None


def workspace_final_run(run_json: Path) -> str | None:
    """The final run the workspace's ``final/run.json`` names (``None`` without a readable one)."""
    document = _workspace_document(FinalRecord, run_json)
    return document.run_id if document is not None else None


def _workspace_document(kind: type[D], path: Path) -> D | None:
    """``path`` read as ``kind``; ``None`` when it is not there, or (with a warning why) not valid."""
    if not path.exists():
        return None
    try:
        return kind.read(path)
    except OpplanError as exc:
        log.warning("the report does not follow %s: %s", path, exc)
        return None


def _tables(data: StoreData, primary: Comparison | None, margin: float) -> list[Table]:
    tables = []
    if not data.plannings.empty:
        tables.append(table5(compare_all(data, margin=margin)))
    if not current_grid(data.baselines, data.experiment)[0].empty:
        tables.append(table3(data.baselines, primary, data.experiment))
    if primary is not None and primary.noise is not None and primary.grid_runs:
        tables.append(comparison_table(primary))
    if primary is not None:
        tables.append(transitions_table(data.transitions, primary))
        curves = finished_curves(data.transitions, data.curves, primary.planning_run)
        tables.append(table1(curves, used=str(data.plan_section.get("fit_function", ""))))
    return tables


def _figures(data: StoreData, primary: Comparison | None, folder: Path) -> list[tuple[str, Path]]:
    """Draw what the store allows; stale figures of an earlier report are removed."""
    made: list[tuple[str, Path | None]] = []
    if primary is not None:
        function = str(data.plan_section.get("fit_function", ""))
        made.append(("Figure 4/5: the explored transition graph, chosen path in red (edge labels: t* ep / V)",
                     fig.graph_figure(data.plan_section, data.transitions, primary, folder / FIGURE_NAMES[0])
                     if primary.path is not None else None))
        made.append(("Figure 2: every transition's validation curve, its fit and the knee t*",
                     fig.curves_figure(data.transitions, data.curves, primary, function, folder / FIGURE_NAMES[1])))
        if data.final_history is not None:
            made.append(("The final schedule: clip length, learning rate and training loss per epoch",
                         fig.schedule_figure(data.final_history, primary, folder / FIGURE_NAMES[2])))
    written = [(caption, path) for caption, path in made if path is not None]
    for name in FIGURE_NAMES:
        stale = folder / name
        if stale.exists() and stale not in {p for _, p in written}:
            stale.unlink()
    return written
