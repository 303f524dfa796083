"""DVC stage ``report``: paper-style tables and figures from the MLflow store."""

from _stage import run_stage

from opplan.report import run_report

if __name__ == "__main__":
    run_stage(run_report)
