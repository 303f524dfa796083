"""Planning cost against grid-search cost, from the MLflow store (paper Table 5, docs/design.md §9).

    python bench/cost.py [--params params.yaml] [--tracking-uri URI]

For every planning in the store: its compute (every explored transition) against the
compute of its experiment's hand-tuned grid, as a ratio in wall-clock seconds and in
epochs, with OP's and HS's held-out top-1 beside them. The paper reports grid search
7–14x more expensive than planning.
"""

from __future__ import annotations

import argparse
import sys

from opplan.errors import OpplanError
from opplan.params_file import load_params
from opplan.report.collect import read_store
from opplan.report.compare import Comparison, compare_all
from opplan.report.tables import cost_text, pct, points, times
from opplan.tracking import resolve_read_uri


def line(c: Comparison) -> str:
    """One planning: ``experiment (hash): planning ... vs grid ...: ratios; accuracies``."""
    head = f"{c.experiment} ({c.config_hash[:8]}): planning {cost_text(c.planning_cost)}"
    if c.grid_cost is None:
        return head + "; no baseline grid in the store"
    ratios = f"grid : OP = {times(c.ratio_seconds)} in seconds, {times(c.ratio_epochs)} in epochs"
    op = f"OP top-1 {pct(c.op_top1)}" if c.op_top1 is not None else "OP not evaluated"
    hs = f"HS top-1 {pct(c.hs_top1)} ({c.hs['name']})" if c.hs is not None else "no finished HS"
    delta = f", Δ {points(c.delta)} points" if c.delta is not None else ""
    return f"{head} vs grid {cost_text(c.grid_cost)} ({c.grid_runs} runs): {ratios}; {op} vs {hs}{delta}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store to read instead of params'")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        data = read_store(resolve_read_uri(args.tracking_uri, params.tracking.uri), params.tracking.experiment)
        comparisons = compare_all(data)
    except OpplanError as exc:
        print(f"cost: error: {exc}", file=sys.stderr)
        return 2
    if not comparisons:
        print("no planning run in the store")
    for c in comparisons:
        print(line(c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
