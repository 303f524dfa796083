"""DVC stage ``final``: retrain from S0 along the planned path on the full training set (docs/design.md §5)."""

from _stage import run_stage

from opplan.stages.final import run_final

if __name__ == "__main__":
    run_stage(run_final, trains=True)
