"""Plan the demo again with another seed and test it where the first plan was tested (docs/design.md §10).

    python bench/replan.py [--seed 1] [--workdir DIR] [--params params.yaml]

Runs the stages ``plan``, ``final`` and ``evaluate`` in a scratch project that shares this
project's ``data/`` and ``shards/`` (so the splits are the same) and differs only in
``seed``: the transitions' initialisation and clip order, and the final retrain's. Prints
both paths and held-out top-1s and whether the second lies within the 95 % interval the
report gives for the first (``reports/comparison.csv``, OP's row), the check "a rerun of
planning with a different seed picks a path whose held-out result lies within the
reported interval of the first". Run it after ``make demo``; it takes about as long as the
demo's plan, final and evaluate stages.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opplan.config import Params  # noqa: E402
from opplan.documents import PlanDocument  # noqa: E402
from opplan.logs import configure_logging  # noqa: E402
from opplan.params_file import load_params  # noqa: E402
from opplan.report.compare import path_steps  # noqa: E402
from opplan.report.summary import steps_text  # noqa: E402


def reported_op(root: Path) -> dict[str, float]:
    """OP's row of the report's comparison table: top-1 and its 95 % interval over videos."""
    path = root / "reports" / "comparison.csv"
    try:
        with path.open(newline="") as f:
            row = next(r for r in csv.DictReader(f) if r["row"].startswith("OP"))
    except (OSError, StopIteration) as exc:
        raise SystemExit(f"replan: no OP row in {path} ({exc}); run `make demo` first") from None
    return {k: float(row[k]) for k in ("top1", "low", "high")}


def path_text(plan_doc: PlanDocument) -> str:
    """``S0 → us/8/0.02 (44 ep) → ...``, as the report writes a path."""
    return steps_text(path_steps(plan_doc) or ())


def replan_params(params: Params, root: Path, seed: int, work: Path) -> Params:
    """``params`` with another seed and its own store, on this project's data and shards."""
    doc = params.model_dump(mode="json")
    doc["seed"] = seed
    doc["data"]["root"] = str((root / params.data.root).resolve())
    doc["prepare"]["out"] = str((root / params.prepare.out).resolve())
    doc["tracking"]["uri"] = f"sqlite:///{work / 'mlflow.db'}"
    return Params.model_validate(doc)


def replan(params: Params, work: Path) -> tuple[PlanDocument, dict, float]:
    """The stages plan, final and evaluate in ``work`` (as opplan study runs them);
    (plan.json, metrics.json, seconds)."""
    from opplan.stages.evaluate import run_evaluate
    from opplan.stages.final import run_final
    from opplan.stages.plan import run_plan

    start = time.perf_counter()
    os.chdir(work)  # the stages write plan.json, final/, .opplan/ ... relative to the project
    for stage in (run_plan, run_final, run_evaluate):
        stage(params)
    seconds = time.perf_counter() - start
    return PlanDocument.read(work / "plan.json"), json.loads((work / "metrics.json").read_text()), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="the rerun's seed (default: 1)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the scratch project here")
    args = parser.parse_args(argv)
    configure_logging()
    first = reported_op(ROOT)
    first_plan = PlanDocument.read(ROOT / "plan.json")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
        work = args.workdir.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="opplan-replan-"))
    params = replan_params(load_params(args.params), ROOT, args.seed, work)
    plan, metrics, seconds = replan(params, work)
    inside = first["low"] <= metrics["top1"] <= first["high"]
    print(f"first  (committed): {path_text(first_plan)}: top-1 {100 * first['top1']:.1f} % "
          f"[{100 * first['low']:.1f}, {100 * first['high']:.1f}]")
    print(f"seed {args.seed} (rerun):   {path_text(plan)}: top-1 {100 * metrics['top1']:.1f} % "
          f"({seconds:.0f} s; scratch project {work})")
    print(f"within the first's interval: {'yes' if inside else 'NO'}")
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
