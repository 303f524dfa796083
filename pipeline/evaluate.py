"""DVC stage ``evaluate``: multi-view testing of the final model on the held-out split (docs/design.md §5)."""

from _stage import run_stage

from opplan.stages.evaluate import run_evaluate

if __name__ == "__main__":
    run_stage(run_evaluate, trains=True)
