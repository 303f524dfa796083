"""Replay a finished planning with ``plan.prune`` on (docs/design.md §10b).

    python bench/prune_replay.py [--plan plan.json] [--curves plots/transitions] [--params params.yaml] [--z 1 2 3]

Feeds each recorded transition's curve (``plots/transitions/*.csv``, the ``plan`` stage's
output) epoch by epoch to the knee stopper and the optimistic bound, and runs the DP with
pruning over those replayed transitions: a transition stops where its bound first falls
below the bar its state has by then. Per-epoch SEs are not in the CSVs: each point takes
the SE of its transition's kept epoch (``plan.json``). Prints, per ``z``, the epochs
trained against the recorded planning's, the transitions pruned, and whether every DP
choice is unchanged (where one changes, the replay of what follows is not what a real
pruned planning would have trained, and it says so).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from opplan.documents import PlanDocument
from opplan.params_file import load_params
from opplan.planning.decisions import Bar, Rule
from opplan.planning.dp import plan_path
from opplan.planning.graph import graph_from_params
from opplan.planning.knee import KneeStopper, optimistic_bound
from opplan.planning.records import PRUNED, TransitionRecord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=Path("plan.json"))
    parser.add_argument("--curves", type=Path, default=Path("plots/transitions"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--z", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    parser.add_argument("--min-epochs", type=int, nargs="+", default=[0, 10],
                        help="prune only from this epoch on (what plan.prune_min_epochs would do)")
    args = parser.parse_args()
    params = load_params(args.params)
    plan = params.plan
    document = PlanDocument.read(args.plan)
    recorded = {(r.src, r.dst): r for r in document.explored}
    curves = {}
    for key in recorded:
        path = args.curves / f"{key[0]}__{key[1]}.csv".replace("/", "-")
        with path.open() as f:
            curves[key] = [float(row["val_acc"]) for row in csv.DictReader(f)]
    graph = graph_from_params(plan)
    rule = Rule(document.decision.rule, document.decision.tie_se)

    def record(key: tuple[str, str]) -> TransitionRecord:
        r = recorded[key].to_json()
        fields = {k: v for k, v in r.items() if k in TransitionRecord.__dataclass_fields__ and k != "bound"}
        return TransitionRecord(**fields | {"score": r["score"] if r["score"] is not None else float("-inf")})

    base = plan_path(graph, lambda s, d, _r: record((s.name, d.name)), rule=rule)
    total = sum(r.epochs_trained for r in recorded.values())
    print(f"{args.plan}: {len(recorded)} transitions, {total} epochs trained, "
          f"path {' → '.join(n.name for n in base.path)}")
    for z, start in ((z, m) for m in args.min_epochs for z in args.z):

        def replay(src, dst, _record, bar: Bar | None = None) -> TransitionRecord:
            key = (src.name, dst.name)
            full, y = record(key), curves[key]
            se = full.se if full.se is not None else float("nan")
            stopper = KneeStopper(plan.fit_function, plan.delay, plan.max_epochs, plan.horizon)
            for t, value in enumerate(y[: full.epochs_trained + 1]):
                decision = stopper.update(value)
                if bar is None or decision.stop or t < start:
                    continue
                bound = optimistic_bound(decision.fit, y[: t + 1], se, z, plan.max_epochs)
                if bound is not None and bar.beats(bound, se):
                    return TransitionRecord(src, dst, PRUNED, epochs_trained=t, bound=bound)
            return full

        result = plan_path(graph, replay, rule=rule, prune=True)
        trained = result.total_epochs_trained
        same = {k: r.src for k, r in result.best.items()} == {k: r.src for k, r in base.best.items()}
        pruned = [r for r in result.records if r.status == PRUNED]
        print(f"z = {z:g}, from epoch {start}: {trained} epochs ({1 - trained / total:.1%} saved), "
              f"{len(pruned)} pruned, path {' → '.join(n.name for n in result.path)}, every choice the same: "
              f"{'yes' if same else 'NO (what follows a changed choice is not replayable)'}")


if __name__ == "__main__":
    main()
