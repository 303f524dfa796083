"""Pruning dominated transitions (docs/design.md §10b): against the DP without pruning
on random oracles whose optimistic bound holds, and the bound of a running transition."""

from __future__ import annotations

import math
from concurrent.futures import Future

import numpy as np
import pytest

from opplan.planning.decisions import Bar, Rule
from opplan.planning.dp import plan_path
from opplan.planning.graph import S0, build_graph
from opplan.planning.knee import KneeStopper, optimistic_bound
from opplan.planning.records import PRUNED, TransitionRecord
from opplan.planning.scheduler import plan_path_parallel

GRAPHS = [dict(sampling=["cs", "us"], clip_lengths=[16, 32, 64], lrs=[0.01, 0.001, 0.0001]),
          dict(sampling=["cs"], clip_lengths=[16, 32, 64], lrs=[0.01, 0.001, 0.0001], kind="basic"),
          dict(sampling=["cs", "us"], clip_lengths=[8, 16, 32, 64], lrs=[0.1, 0.01, 0.001], max_jump=2)]


class CurveOracle:
    """Each transition a rising-then-flat curve of ``epochs`` points; its full ``V`` is the
    curve's value at the kept epoch. With a bar, it stops at the first epoch where
    ``max(curve so far) + slack`` (an upper bound of ``V``: the curve's remaining rise is at
    most ``slack``) cannot reach the bar, and counts the epochs saved."""

    def __init__(self, seed: int, se: float = 0.02):
        self.rng, self.se = np.random.default_rng(seed), se
        self.curves: dict[tuple[str, str], np.ndarray] = {}
        self.trained = 0

    def curve(self, src, dst, src_record) -> np.ndarray:
        key = (src.name, dst.name)
        if key not in self.curves:
            start = 0.0 if src_record is None else src_record.score
            gain = self.rng.normal(0.05, 0.1)
            n = int(self.rng.integers(8, 30))
            rise = 1 - np.exp(-np.arange(n) / self.rng.uniform(1, 6))
            self.curves[key] = start + gain * rise
        return self.curves[key]

    def __call__(self, src, dst, src_record, bar: Bar | None = None) -> TransitionRecord:
        y = self.curve(src, dst, src_record)
        v = float(y[-1])
        slack = float(abs(y[-1] - y[0]))  # the rise still possible after any epoch: an upper bound
        for t in range(1, len(y)):
            bound = float(y[: t + 1].max()) + slack - abs(y[t] - y[0])
            if bar is not None and bar.beats(bound, self.se) and t < len(y) - 1:
                self.trained += t
                return TransitionRecord(src, dst, PRUNED, epochs_trained=t, bound=bound, run_id=f"r-{dst.name}")
        self.trained += len(y) - 1
        return TransitionRecord(src, dst, "finished", score=v, fitted=v, observed=v, chosen_epoch=len(y) - 1,
                                epochs_trained=len(y) - 1, se=self.se, run_id=f"r-{src.name}-{dst.name}")


@pytest.mark.parametrize("spec", GRAPHS)
@pytest.mark.parametrize("rule", [Rule(), Rule("within_se", 1.0)])
def test_pruning_keeps_the_dp_choice_on_random_oracles(spec, rule):
    graph = build_graph(**spec)
    saved = []
    for seed in range(40):
        full, pruned = CurveOracle(seed), CurveOracle(seed)
        a = plan_path(graph, full, rule=rule)
        pruned.curves = dict(full.curves)  # the same curves, whatever order they are asked in
        b = plan_path(graph, pruned, rule=rule, prune=True)
        assert [s.name for s in b.path] == [s.name for s in a.path]
        assert b.epochs == a.epochs and b.score == a.score
        assert {k: r.src for k, r in b.best.items()} == {k: r.src for k, r in a.best.items()}
        assert all(r.status != PRUNED for r in b.transitions)
        saved.append(1 - pruned.trained / full.trained)
    assert max(saved) > 0  # pruning did prune, or the test would prove nothing


def test_pruned_transitions_are_recorded_and_never_chosen():
    graph = build_graph(sampling=["cs"], clip_lengths=[16, 32], lrs=[0.01, 0.001])
    oracle = CurveOracle(3)
    result = plan_path(graph, oracle, prune=True)
    document = result.to_json()
    pruned = [r for r in result.records if r.status == PRUNED]
    assert document["prune"] is True
    assert len(document["pruned"]) == len(pruned) == document["compute"]["pruned"]
    assert all(p["bound"] is not None for p in document["pruned"])
    assert not any(r.status == PRUNED for r in result.best.values())


def test_parallel_pruning_keeps_the_choice():
    graph = build_graph(**GRAPHS[0])
    for seed in range(10):
        full = CurveOracle(seed)
        a = plan_path(graph, full)
        oracle = CurveOracle(seed)
        oracle.curves = dict(full.curves)

        def submit(src, dst, src_record, bar=None):
            future: Future = Future()
            future.set_result(oracle(src, dst, src_record, bar=bar))
            return future

        b = plan_path_parallel(graph, submit, 3, prune=True)
        assert [s.name for s in b.path] == [s.name for s in a.path] and b.score == a.score


def test_bar_argmax_and_within_se():
    assert Bar(0.5).beats(0.49) and not Bar(0.5).beats(0.5) and not Bar(0.5).beats(math.nan)
    tie = Bar(0.5, 0.01, Rule("within_se", 1.0))
    assert not tie.beats(0.49, 0.01)  # 0.01 / 0.014 = 0.7 SE: could tie, so it runs on
    assert tie.beats(0.45, 0.01)  # 3.5 SE below
    assert not Bar(-math.inf).beats(0.1)


def test_optimistic_bound_is_the_fit_peak_plus_z_se():
    t = np.arange(12)
    curve = 0.6 - 0.4 * np.exp(-t / 3)
    stopper = KneeStopper(function="exponential", delay=4, max_epochs=50)
    for y in curve:
        decision = stopper.update(float(y))
    bound = optimistic_bound(decision.fit, curve, 0.02, z=2.0)
    assert bound == pytest.approx(max(decision.fit.value, curve.max()) + 0.04)
    assert bound >= 0.6 - 1e-3
    assert optimistic_bound(None, curve, 0.02, z=2.0) is None  # no fit yet: no bound, no pruning
    early = optimistic_bound(decision.fit, curve[:3], 0.0, z=0.0, last_epoch=2)  # cannot train past epoch 2
    assert early == pytest.approx(max(float(np.max(decision.fit.predict(np.arange(3)))), curve[:3].max()))
    assert early < bound


@pytest.mark.slow
def test_a_transition_below_the_bar_is_pruned_recorded_in_mlflow_and_reused(tiny_shards, tmp_path, one_torch_thread):
    from opplan import tracking as t
    from opplan.stages.transitions import TransitionRunner
    from opplan.train.setup import TrainSetup
    from tests.test_stages import tiny_params

    params = tiny_params(tiny_shards, tmp_path / "mlflow.db", delay=2, max_epochs=6, metric="prob", prune=True,
                         prune_min_epochs=3)
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    parent = tracker.create_run("plan", {t.TAG_KIND: t.KIND_PLANNING})
    runner = TransitionRunner(tracker, parent, TrainSetup(params, tiny_shards), tmp_path / "work")
    graph = build_graph(["cs"], [4, 8], [0.02, 0.002], kind="basic")
    dst = graph.successors(S0)[0]
    record = runner(S0, dst, None, bar=Bar(2.0))  # no metric can reach 2: pruned once a fit exists
    assert record.status == PRUNED and 3 <= record.epochs_trained < 6 and record.checkpoint is None
    assert record.bound is not None and record.bound < 2.0
    run = tracker.get_run(record.run_id)
    assert run.data.tags[t.TAG_PRUNED] == "true" and run.data.metrics[t.M_PRUNE_BAR] == 2.0
    again = runner(S0, dst, None, bar=None)  # a rerun reuses the pruned run, whatever the bar now
    assert again == record
    from opplan.report import run_report

    tracker.end_run(parent, t.STATUS_FINISHED)
    params = params.model_copy(update={"report": params.report.model_copy(update={"figures": False})})
    folder = run_report(params, out=str(tmp_path / "reports")).parent
    text = "\n".join(p.read_text() for p in folder.rglob("*.md"))
    assert "Pruned: bound < bar" in text and f"{record.bound:.4f} < 2.0000" in text  # fractions, as V is
    assert "1 transition(s) pruned (plan.prune" in text
    assert f"S0 → {dst.name} after {record.epochs_trained} epochs" in text


@pytest.mark.slow
def test_a_pruned_planning_writes_plan_json_the_report_and_its_params(tiny_shards, tmp_path, monkeypatch,
                                                                      one_torch_thread):
    """The plan stage with plan.prune on the tiny data: the transitions into a state run from
    the best source first, what it prunes is in plan.json, the options are params of the
    planning run, and the report is written."""
    import json
    from pathlib import Path

    from opplan import tracking as t
    from opplan.report import run_report
    from opplan.stages.plan import run_plan
    from tests.test_stages import tiny_params

    monkeypatch.chdir(tmp_path)
    params = tiny_params(tiny_shards, tmp_path / "mlflow.db", delay=2, max_epochs=5, metric="prob", prune=True,
                         prune_z=0.0, prune_min_epochs=2, lrs=[0.02, 0.002, 0.0002])
    params = params.model_copy(update={"report": params.report.model_copy(update={"figures": False})})
    result = run_plan(params)
    document = json.loads(Path("plan.json").read_text())
    assert document["prune"] is True
    pruned = [r for r in result.records if r.status == PRUNED]
    assert [p["transition"] for p in document["pruned"]] == [f"{r.src} -> {r.dst}" for r in pruned]
    assert not any(r.status == PRUNED for r in result.transitions)
    order = [(r.src, r.dst) for r in result.records]  # into cs/8/0.02: from cs/4/0.02 (it has a V), then S0
    assert order.index(("cs/4/0.02", "cs/8/0.02")) < order.index(("S0", "cs/8/0.02"))
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    planning = tracker.search({t.TAG_KIND: t.KIND_PLANNING})[0]
    assert planning.data.params["plan.prune"] == "True" and planning.data.params["plan.prune_z"] == "0.0"
    assert planning.data.params["train.val_cache_mb"] == str(params.train.val_cache_mb)
    assert run_report(params, out=str(tmp_path / "reports")).exists()
