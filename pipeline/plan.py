"""DVC stage ``plan``: explore the transition graph and choose the path (docs/design.md §2–4)."""

from _stage import run_stage

from opplan.stages.plan import run_plan

if __name__ == "__main__":
    run_stage(run_plan, trains=True)
