"""DVC stage ``baselines``: the hand-tuned grid OP is compared with (docs/design.md §6)."""

from _stage import run_stage

from opplan.stages.baselines import run_baselines

if __name__ == "__main__":
    run_stage(run_baselines, trains=True)
