"""Held-out top-1 of two reproduced projects, paired video by video: e.g. the demo prepared with
``prepare.codec: raw`` and the same demo with ``jpeg`` (docs/design.md §1b).

Usage: ``python bench/codec.py PROJECT_A PROJECT_B``. Each project is a folder where ``dvc
repro`` ran (its ``final/run.json`` names the final run and ``params.yaml`` the store). Reads
each final run's ``predictions.json`` from its store, pairs them over the held-out videos and
prints both top-1s with 95% intervals, A − B with its paired bootstrap interval and the verdict
at ``report.margin``, plus each planning's chosen path and cost. One planning per side: the
difference includes planning's own variance (replanning alone moved the demo's top-1 by
several points, docs/study.md), so "within noise" here is a statement about that whole spread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from opplan import names as n
from opplan.params_file import load_params
from opplan.predictions import mean_over_runs
from opplan.stats import paired_compare, video_estimate
from opplan.tracking.client import open_store
from opplan.tracking.store import SQLITE, sqlite_path


def final_predictions(project: Path) -> tuple[dict, dict, dict]:
    """(predictions.json of the final run, final/run.json, plan.json) of one project."""
    params = load_params(project / "params.yaml")
    run = json.loads((project / "final" / "run.json").read_text())
    plan = json.loads((project / "plan.json").read_text())
    uri = params.tracking.uri
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():  # the project's own store, not the current folder's
        uri = SQLITE + str((project / db).resolve())
    stores = open_store(uri)
    store = stores.get(params.tracking.experiment)
    doc = store.read_json_artifact(run["run_id"], n.ARTIFACT_PREDICTIONS) if store else None
    if doc is None:
        sys.exit(f"{project}: the final run {run['run_id']} has no {n.ARTIFACT_PREDICTIONS} in its store")
    return doc, run, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    sides = {p: final_predictions(p) for p in (args.a, args.b)}
    margin = load_params(args.a / "params.yaml").report.margin / 100  # points -> fraction
    values = [mean_over_runs([doc]) for doc, _, _ in sides.values()]  # raises when the videos differ
    for (project, (doc, run, plan)), x in zip(sides.items(), values):
        est = video_estimate(x)
        print(f"{project}: top-1 {100 * est.mean:.1f}% [{100 * est.low:.1f}, {100 * est.high:.1f}] over {est.n} "
              f"videos; path {' → '.join(plan['path'])}; final {run['epochs']} epochs in "
              f"{run['compute_seconds']:.0f} s")
    p = paired_compare(values[0], values[1], delta=margin)
    print(f"A − B = {100 * p.diff:+.1f} points, 95% paired bootstrap interval [{100 * p.low:+.1f}, {100 * p.high:+.1f}],"
          f" McNemar p = {p.p_mcnemar:.2f}; verdict at δ = {100 * margin:g} points: {p.verdict}")


if __name__ == "__main__":
    main()
