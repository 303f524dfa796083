"""The DP planner (docs/design.md §3) against a synthetic oracle and a brute-force search over all paths."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from opplan.errors import OpplanError
from opplan.planning.decisions import ARGMAX, FINAL, Rule
from opplan.planning.dp import PlanningError, plan_path
from opplan.planning.graph import S0, build_graph
from opplan.planning.records import TransitionRecord


class Oracle:
    """``V(Si -> Sj) = V(Si) + w(Si, Sj)``: additive, so the best path is the heaviest one.

    Reads ``V(Si)`` from the record the planner hands over as Si's model, which checks
    that the planner passes the chosen incoming record of the source.
    """

    def __init__(self, weights, epochs=None, failed=()):
        self.weights, self.epochs, self.failed = weights, epochs or {}, set(failed)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, src, dst, src_record):
        key = (src.name, dst.name)
        self.calls.append(key)
        if src == S0:
            assert src_record is None
        else:
            assert src_record.dst == src.name and src_record.finished
        if key in self.failed:
            return TransitionRecord(src, dst, "failed", epochs_trained=3, seconds=1.5)
        base = 0.0 if src_record is None else src_record.score
        score = base + self.weights[key]
        epochs = self.epochs.get(key, 5)
        return TransitionRecord(src, dst, "finished", score=score, fitted=score, observed=score - 0.01,
                                chosen_epoch=epochs, epochs_trained=epochs + 10, seconds=2.0,
                                run_id=f"run-{src.name}-{dst.name}", checkpoint=f"ckpt/{dst.name}")


def all_paths(graph, node=S0, prefix=()):
    prefix = (*prefix, node)
    if node in graph.final_states:
        yield prefix
    for nxt in graph.successors(node):
        yield from all_paths(graph, nxt, prefix)


def brute_force(graph, weights):
    best = max(all_paths(graph), key=lambda p: sum(weights[(a.name, b.name)] for a, b in zip(p, p[1:])))
    return best, sum(weights[(a.name, b.name)] for a, b in zip(best, best[1:]))


GRAPHS = {
    "extended-3x3": dict(sampling=["cs", "us"], clip_lengths=[16, 32, 64], lrs=[0.01, 0.001, 0.0001]),
    "basic-3x3": dict(sampling=["cs"], clip_lengths=[16, 32, 64], lrs=[0.01, 0.001, 0.0001], kind="basic"),
    "jump2-2x4": dict(sampling=["us"], clip_lengths=[8, 16], lrs=[0.1, 0.03, 0.01, 0.003], max_jump=2),
    "two-finals": dict(sampling=["cs"], clip_lengths=[8, 16, 32], lrs=[0.1, 0.01],
                       final_states=["cs/32/0.01", "cs/16/0.01"]),
}


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("seed", range(4))
def test_dp_finds_the_brute_force_optimum(name, seed):
    graph = build_graph(**GRAPHS[name])
    rng = np.random.default_rng(seed)
    weights = {(a.name, b.name): float(rng.uniform(-1, 1)) for a, b in graph.edges}
    oracle = Oracle(weights)
    result = plan_path(graph, oracle)
    path, value = brute_force(graph, weights)
    assert [n.name for n in result.path] == [n.name for n in path]
    assert result.score == pytest.approx(value)
    assert len(oracle.calls) == len(graph.edges) == len(set(oracle.calls))  # every edge once, nothing skipped


def test_result_bookkeeping_and_plan_json():
    graph = build_graph(["cs"], [8, 16], [0.1, 0.01], kind="basic")
    weights = {(a.name, b.name): 0.1 for a, b in graph.edges}
    weights[("S0", "cs/16/0.1")] = 0.5
    result = plan_path(graph, Oracle(weights, epochs={("S0", "cs/16/0.1"): 7}))
    assert [n.name for n in result.path] == ["S0", "cs/16/0.1", "cs/16/0.01"]
    assert result.epochs == (7, 5) and result.path_epochs == 12
    assert result.score == pytest.approx(0.6) and result.final_state.name == "cs/16/0.01"
    assert result.total_epochs_trained == sum(e + 10 for e in [5, 7, 5, 5, 5, 5])
    assert result.total_seconds == pytest.approx(12.0)
    assert result.best_predecessor == {"cs/8/0.1": "S0", "cs/16/0.1": "S0", "cs/8/0.01": "cs/8/0.1",
                                       "cs/16/0.01": "cs/16/0.1"}
    document = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert document["path"] == ["S0", "cs/16/0.1", "cs/16/0.01"] and document["epochs"] == [7, 5]
    assert len(document["explored"]) == 6 and document["compute"]["epochs_trained"] == 92
    assert document["transitions"][0]["checkpoint"] == "ckpt/cs/16/0.1"
    assert document["final_scores"] == {"cs/16/0.01": pytest.approx(0.6)}


def tie_graph():
    # cs/16/0.1 has two predecessors: S0 and cs/8/0.1
    return build_graph(["cs"], [8, 16], [0.1, 0.01], kind="basic", final_states=["cs/16/0.1"])


@pytest.mark.parametrize("direct, via, expected", [(10, 2, "cs/8/0.1"), (4, 2, "S0"), (5, 2, "S0"), (6, 0, "cs/8/0.1")])
def test_ties_go_to_fewer_epochs_along_the_path_then_to_the_name(direct, via, expected):
    # V is 0.5 by both routes; epochs: S0 -> cs/8/0.1 takes 3, then `via`, against `direct`.
    # With 3 + 2 == 5 epochs either way, "S0" sorts before "cs/8/0.1".
    weights = {("S0", "cs/8/0.1"): 0.25, ("S0", "cs/16/0.1"): 0.5, ("cs/8/0.1", "cs/16/0.1"): 0.25}
    epochs = {("S0", "cs/8/0.1"): 3, ("S0", "cs/16/0.1"): direct, ("cs/8/0.1", "cs/16/0.1"): via}
    result = plan_path(tie_graph(), Oracle(weights, epochs))
    assert result.best_predecessor["cs/16/0.1"] == expected


def test_failed_transitions_are_minus_infinity_and_block_their_subtree():
    graph = build_graph(["cs"], [8, 16], [0.1, 0.01], kind="basic")
    weights = {(a.name, b.name): 1.0 for a, b in graph.edges}
    oracle = Oracle(weights, failed={("S0", "cs/8/0.1")})
    result = plan_path(graph, oracle)
    assert [n.name for n in result.path] == ["S0", "cs/16/0.1", "cs/16/0.01"]
    # cs/8/0.1 got no model, so cs/8/0.01 (its only input) neither: their out-edges are never run
    assert oracle.calls == [("S0", "cs/8/0.1"), ("S0", "cs/16/0.1"), ("cs/16/0.1", "cs/16/0.01")]
    assert set(result.skipped) == {("cs/8/0.1", "cs/16/0.1"), ("cs/8/0.1", "cs/8/0.01"),
                                   ("cs/8/0.01", "cs/16/0.01")}
    assert set(result.best) == {"cs/16/0.1", "cs/16/0.01"}
    failed = [r for r in result.records if not r.finished]
    assert [(r.src, r.dst, r.score, r.epochs) for r in failed] == [("S0", "cs/8/0.1", -math.inf, 0)]
    assert result.total_epochs_trained == 3 + 15 + 15  # failed transitions still cost compute


def test_failed_transition_loses_against_a_worse_finished_one():
    weights = {("S0", "cs/8/0.1"): 0.1, ("S0", "cs/16/0.1"): 0.9, ("cs/8/0.1", "cs/16/0.1"): -5.0}
    result = plan_path(tie_graph(), Oracle(weights, failed={("S0", "cs/16/0.1")}))
    assert result.best_predecessor["cs/16/0.1"] == "cs/8/0.1" and result.score == pytest.approx(-4.9)
    assert result.to_json()["explored"][1]["score"] is None  # -inf in plan.json


def test_every_route_failed_raises_planning_error():
    graph = build_graph(["cs"], [8, 16], [0.1, 0.01], kind="basic")
    weights = {(a.name, b.name): 1.0 for a, b in graph.edges}
    into_final = {("cs/16/0.1", "cs/16/0.01"), ("cs/8/0.01", "cs/16/0.01")}
    with pytest.raises(PlanningError, match="cs/16/0.01") as info:
        plan_path(graph, Oracle(weights, failed=into_final))
    assert isinstance(info.value, OpplanError)
    oracle = Oracle(weights, failed={("S0", "cs/8/0.1"), ("S0", "cs/16/0.1")})
    with pytest.raises(PlanningError):
        plan_path(graph, oracle)
    assert len(oracle.calls) == 2  # nothing else had a model to start from


def test_t_star_zero_contributes_zero_epochs():
    graph = build_graph(["cs"], [8, 16], [0.1, 0.01], kind="basic", start_lengths=[8])
    weights = {(a.name, b.name): 1.0 for a, b in graph.edges}
    weights[("cs/8/0.1", "cs/16/0.1")] = 2.0
    epochs = {("cs/8/0.1", "cs/16/0.1"): 0}
    result = plan_path(graph, Oracle(weights, epochs))
    assert [n.name for n in result.path] == ["S0", "cs/8/0.1", "cs/16/0.1", "cs/16/0.01"]
    assert result.epochs == (5, 0, 5) and result.path_epochs == 10
    assert [(s.name, e) for s, e in result.schedule()] == [("cs/8/0.1", 5), ("cs/16/0.01", 5)]


def test_prefer_observed_and_nan_scores():
    graph = tie_graph()

    def oracle(src, dst, record):
        observed = {"S0": 0.2, "cs/8/0.1": 0.7}[src.name] if dst.name == "cs/16/0.1" else 0.5
        return TransitionRecord(src, dst, "finished", score=math.nan, fitted=0.9 if src == S0 else 0.1,
                                observed=observed, chosen_epoch=1)

    assert plan_path(graph, oracle, prefer="observed").best_predecessor["cs/16/0.1"] == "cs/8/0.1"
    assert plan_path(graph, oracle, prefer="fitted").best_predecessor["cs/16/0.1"] == "S0"
    result = plan_path(graph, oracle)  # NaN scores are -inf, but the transitions did finish
    assert result.score == -math.inf and [n.name for n in result.path] == ["S0", "cs/16/0.1"]


def test_contract_violations_are_loud():
    graph = tie_graph()
    with pytest.raises(ValueError, match="returned the record of"):
        plan_path(graph, lambda s, d, r: TransitionRecord("S0", "cs/8/0.01", "finished", chosen_epoch=1))
    with pytest.raises(TypeError):
        plan_path(graph, lambda s, d, r: {"score": 1.0})
    with pytest.raises(ValueError, match="chosen_epoch"):
        TransitionRecord("S0", "cs/8/0.1", "finished")
    with pytest.raises(ValueError, match="status"):
        TransitionRecord("S0", "cs/8/0.1", "done", chosen_epoch=1)


def test_the_planning_core_imports_neither_torch_nor_mlflow():
    import subprocess
    import sys

    code = ("import sys, opplan.planning.dp, opplan.planning.scheduler, opplan.planning.knee, opplan.planning.graph, "
            "opplan.planning.drawing, opplan.planning.commands, opplan.planning.diagnosis; "
            "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the noise-aware DP (plan.decision, docs/design.md §10) ------------------------------------------


class NoisyOracle(Oracle):
    """:class:`Oracle` whose records carry an SE per edge (``ses``; default: none)."""

    def __init__(self, weights, epochs=None, ses=None, failed=()):
        super().__init__(weights, epochs, failed)
        self.ses = ses or {}

    def __call__(self, src, dst, src_record):
        record = super().__call__(src, dst, src_record)
        return replace(record, se=self.ses.get((src.name, dst.name)))


def random_oracle(graph, seed, *, se_scale=0.1):
    rng = np.random.default_rng(seed)
    edges = [(a.name, b.name) for a, b in graph.edges]
    weights = {e: float(rng.integers(-4, 5)) / 8 for e in edges}  # a coarse grid: exact ties happen
    epochs = {e: int(rng.integers(0, 30)) for e in edges}
    ses = {e: float(rng.uniform(0, se_scale)) for e in edges}
    return weights, epochs, ses


def path_epochs(path, epochs):
    return sum(epochs[(a.name, b.name)] for a, b in zip(path, path[1:]))


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("seed", range(4))
def test_within_se_without_noise_is_the_papers_argmax(name, seed):
    graph = build_graph(**GRAPHS[name])
    weights, epochs, ses = random_oracle(graph, seed)
    paper = plan_path(graph, Oracle(weights, epochs))
    assert plan_path(graph, Oracle(weights, epochs), rule=ARGMAX).to_json() == paper.to_json()
    # tie_se = 0, or no SEs at all: only equal V tie, and those go to fewer epochs as in argmax
    for rule, oracle in [(Rule("within_se", 0.0), NoisyOracle(weights, epochs, ses)),
                         (Rule("within_se", 5.0), Oracle(weights, epochs))]:
        result = plan_path(graph, oracle, rule=rule)
        assert [n.name for n in result.path] == [n.name for n in paper.path]
        assert result.best_predecessor == paper.best_predecessor
    # argmax with SEs: the same path as without, now with margins >= 0 in SEs
    noisy = plan_path(graph, NoisyOracle(weights, epochs, ses))
    assert [n.name for n in noisy.path] == [n.name for n in paper.path]
    assert all(c.margin_se is None or c.margin_se >= 0 for c in noisy.choices.values())
    assert not any(c.tie for c in noisy.choices.values())


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("seed", range(4))
def test_within_se_with_everything_a_tie_takes_the_path_of_fewest_epochs(name, seed):
    graph = build_graph(**GRAPHS[name])
    weights, epochs, ses = random_oracle(graph, seed)
    result = plan_path(graph, NoisyOracle(weights, epochs, ses), rule=Rule("within_se", math.inf))
    fewest = min(path_epochs(p, epochs) for p in all_paths(graph))
    assert result.path_epochs == fewest


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("seed", range(6))
def test_every_within_se_decision_obeys_the_rule(name, seed):
    """Brute force per decision: among the candidates the DP saw, the chosen one is within
    tie_se SEs of the best V, and no other such candidate has fewer path epochs."""
    graph = build_graph(**GRAPHS[name])
    weights, epochs, ses = random_oracle(graph, seed, se_scale=0.3)
    tie_se = 1.0
    result = plan_path(graph, NoisyOracle(weights, epochs, ses), rule=Rule("within_se", tie_se))
    reached = {S0.name: (0.0, 0)}  # state -> (V, path epochs) of its chosen model
    for state in graph.states:
        choice = result.choices.get(state.name)
        records = [r for r in result.records if r.dst == state.name and r.finished]
        if choice is None:
            assert not records
            continue
        options = {r.src: (r.score, r.se_value(), reached[r.src][1] + r.epochs) for r in records}
        best_v = max(v for v, _, _ in options.values())
        best_se = min(se for v, se, _ in options.values() if v == best_v)

        def tied(option):
            v, se, _ = option
            return v == best_v or (best_v - v) / math.hypot(best_se, se) <= tie_se

        v, se, epochs_ = options[choice.chosen]
        assert tied(options[choice.chosen])
        assert all(e >= epochs_ for o in options.values() if tied(o) for e in [o[2]])
        reached[state.name] = (v, epochs_)
        if choice.runner_up is not None:  # the runner-up is the best other V; the margin is in SEs
            others = {k: o for k, o in options.items() if k != choice.chosen}
            assert choice.runner_up_value == max(o[0] for o in others.values())
            rv, rse, _ = options[choice.runner_up]
            assert choice.margin == pytest.approx(v - rv)
            assert choice.margin_se == pytest.approx((v - rv) / math.hypot(se, rse))
    final = result.choices[FINAL]
    assert final.chosen == result.final_state.name


def test_margins_in_standard_errors_reach_plan_json():
    weights = {("S0", "cs/8/0.1"): 0.25, ("S0", "cs/16/0.1"): 0.5, ("cs/8/0.1", "cs/16/0.1"): 0.3}
    epochs = {("S0", "cs/8/0.1"): 3, ("S0", "cs/16/0.1"): 9, ("cs/8/0.1", "cs/16/0.1"): 2}
    ses = {("S0", "cs/8/0.1"): 0.03, ("S0", "cs/16/0.1"): 0.04, ("cs/8/0.1", "cs/16/0.1"): 0.03}
    # into cs/16/0.1: S0 gives 0.5 ± 0.04 in 9 epochs, cs/8/0.1 gives 0.55 ± 0.03 in 5
    paper = plan_path(tie_graph(), NoisyOracle(weights, epochs, ses))
    choice = paper.choices["cs/16/0.1"]
    assert (choice.chosen, choice.runner_up, choice.tie) == ("cs/8/0.1", "S0", False)
    assert choice.margin == pytest.approx(0.05) and choice.margin_se == pytest.approx(0.05 / 0.05)
    document = json.loads(json.dumps(paper.to_json(), allow_nan=False))
    assert document["decision"] == {"rule": "argmax", "tie_se": 1.0}
    on_path = [d for d in document["decisions"] if d["on_path"]]
    assert [d["state"] for d in on_path] == ["cs/8/0.1", "cs/16/0.1", FINAL]
    assert on_path[1]["margin_se"] == pytest.approx(1.0) and on_path[1]["runner_up"] == "S0"
    assert on_path[2]["runner_up"] is None and on_path[2]["candidates"] == 1
    assert document["transitions"][1]["se"] == pytest.approx(0.03)
    # within 2 SEs the two routes tie and fewer epochs win ... which is again cs/8/0.1 (5 < 9)
    epochs[("cs/8/0.1", "cs/16/0.1")] = 7  # now 10 epochs against 9: S0 wins the tie, 1 SE below
    noisy = plan_path(tie_graph(), NoisyOracle(weights, epochs, ses), rule=Rule("within_se", 2.0))
    choice = noisy.choices["cs/16/0.1"]
    assert (choice.chosen, choice.runner_up, choice.tie) == ("S0", "cs/8/0.1", True)
    assert choice.margin_se == pytest.approx(-1.0) and "within noise" in choice.describe()
    assert plan_path(tie_graph(), NoisyOracle(weights, epochs, ses), rule=Rule("within_se", 0.9)) \
        .choices["cs/16/0.1"].chosen == "cs/8/0.1"


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_parallel_within_se_plan_equals_the_sequential_one(workers, seed):
    from concurrent.futures import ThreadPoolExecutor

    from opplan.planning.scheduler import plan_path_parallel

    graph = build_graph(**GRAPHS["extended-3x3"])
    weights, epochs, ses = random_oracle(graph, seed, se_scale=0.3)
    rule = Rule("within_se", 1.0)
    expected = plan_path(graph, NoisyOracle(weights, epochs, ses), rule=rule)
    oracle = NoisyOracle(weights, epochs, ses)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        result = plan_path_parallel(graph, lambda s, d, r: pool.submit(oracle, s, d, r), workers, rule=rule)
    assert result.to_json() == expected.to_json()


def test_rule_and_record_validation():
    with pytest.raises(ValueError, match="decision"):
        Rule("lcb")
    with pytest.raises(ValueError, match="tie_se"):
        Rule("within_se", -1.0)
    record = TransitionRecord("S0", "cs/8/0.1", "finished", chosen_epoch=1, se=0.02, capped=True)
    assert record.to_json()["se"] == 0.02 and record.to_json()["capped"] is True
    assert math.isnan(TransitionRecord("S0", "cs/8/0.1", "failed").se_value())


# --- K transitions at once (plan_path_parallel) ------------------------------------------


class TimedOracle:
    """A thread-safe oracle with random (but per-edge fixed) scores, epochs, failures and sleeps.

    ``V = V(src) + w`` on a coarse grid, so that ties (broken by path epochs, then name)
    happen. Records what the scheduler did: calls with their start/end order, the most
    transitions running at once.
    """

    def __init__(self, graph, seed, *, fail_rate=0.15, sleep=0.002):
        import threading

        rng = np.random.default_rng(seed)
        self.weights = {(a.name, b.name): float(rng.integers(-2, 3)) / 4 for a, b in graph.edges}
        self.epochs = {(a.name, b.name): int(rng.integers(0, 4)) for a, b in graph.edges}
        self.failed = {(a.name, b.name) for a, b in graph.edges if rng.random() < fail_rate}
        self.sleeps = {(a.name, b.name): float(rng.uniform(0, sleep)) for a, b in graph.edges}
        self.lock = threading.Lock()
        self.running = self.max_running = 0
        self.calls: list[tuple[str, str, object]] = []
        self.ended: list[tuple[str, str]] = []

    def __call__(self, src, dst, src_record):
        import time

        key = (src.name, dst.name)
        with self.lock:
            self.calls.append((*key, src_record))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.sleeps[key])
            if key in self.failed:
                return TransitionRecord(src, dst, "failed", epochs_trained=2, run_id=f"run-{key}")
            base = 0.0 if src_record is None else src_record.score
            v = base + self.weights[key]
            return TransitionRecord(src, dst, "finished", score=v, fitted=v + 0.5, observed=-v,
                                    chosen_epoch=self.epochs[key], epochs_trained=self.epochs[key] + 1,
                                    run_id=f"run-{key}")
        finally:
            with self.lock:
                self.running -= 1
                self.ended.append(key)


def run_parallel(graph, oracle, workers, *, prefer="score", call=None):
    """``plan_path_parallel`` over a thread pool with more threads than ``workers``, so that
    the bound on transitions at once is the scheduler's, not the pool's. ``call`` (default
    ``oracle``) runs a transition. Returns the result and, per submission, ``(src, dst,
    transitions ended by then)``."""
    from concurrent.futures import ThreadPoolExecutor

    from opplan.planning.scheduler import plan_path_parallel

    submitted: list[tuple[str, str, frozenset]] = []

    def submit(src, dst, src_record):
        with oracle.lock:
            submitted.append((src.name, dst.name, frozenset(oracle.ended)))
        return pool.submit(call or oracle, src, dst, src_record)

    with ThreadPoolExecutor(max_workers=workers + 3) as pool:
        return plan_path_parallel(graph, submit, workers, prefer=prefer), submitted


def sequential_or_error(graph, oracle, prefer):
    try:
        return plan_path(graph, oracle, prefer=prefer)
    except PlanningError as exc:
        return exc


PARALLEL_GRAPHS = {
    "extended-3x3": GRAPHS["extended-3x3"],
    "basic-3x3": GRAPHS["basic-3x3"],
    "jump2-3x3": dict(sampling=["cs"], clip_lengths=[16, 32, 64], lrs=[0.01, 0.001, 0.0001], max_jump=2),
    "jump2-basic-2x4": dict(GRAPHS["jump2-2x4"], kind="basic"),
    "two-finals": GRAPHS["two-finals"],
}


@pytest.mark.parametrize("name", PARALLEL_GRAPHS)
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_parallel_plan_equals_the_sequential_one(name, workers, seed):
    graph = build_graph(**PARALLEL_GRAPHS[name])
    prefer = ("score", "fitted", "observed")[seed % 3]
    expected = sequential_or_error(graph, TimedOracle(graph, seed, sleep=0), prefer)
    oracle = TimedOracle(graph, seed)
    if isinstance(expected, PlanningError):
        with pytest.raises(PlanningError):
            run_parallel(graph, oracle, workers, prefer=prefer)
        return
    result, submitted = run_parallel(graph, oracle, workers, prefer=prefer)
    assert result.to_json() == expected.to_json()  # path, scores, order of the explored records
    assert result == expected
    # every transition the DP ran, once; each handed the source's final model
    assert sorted((s, d) for s, d, _ in oracle.calls) == sorted((r.src, r.dst) for r in expected.records)
    for src, dst, src_record in oracle.calls:
        assert src_record == (None if src == "S0" else expected.best[src])
    # nothing submitted before every transition the DP runs into its source had ended
    skipped = set(expected.skipped)
    for src, dst, ended in submitted:
        node = graph.state(src)
        assert all((p.name, src) in ended or (p.name, src) in skipped for p in graph.predecessors(node))
    assert oracle.max_running <= workers


def test_two_workers_really_run_two_transitions_at_once():
    import threading

    graph = build_graph(**GRAPHS["extended-3x3"])  # S0 has four edges, all ready at the start
    oracle = TimedOracle(graph, 0, fail_rate=0, sleep=0)
    barrier = threading.Barrier(2, timeout=10)
    first_two = [("S0", "cs/16/0.01"), ("S0", "cs/32/0.01")]

    def meeting(src, dst, src_record):
        if (src.name, dst.name) in first_two:
            barrier.wait()  # BrokenBarrierError unless both run at the same time
        return oracle(src, dst, src_record)

    result, submitted = run_parallel(graph, oracle, 2, call=meeting)
    assert [(s, d) for s, d, _ in submitted[:2]] == first_two
    assert oracle.max_running == 2
    assert result.to_json() == plan_path(graph, TimedOracle(graph, 0, fail_rate=0, sleep=0)).to_json()


def test_a_raising_transition_stops_submitting_lets_the_running_finish_and_propagates():
    """No timing: the raising transition waits until the other one has started, and the other
    one is released only when the scheduler reports the error (so it is running then)."""
    import logging
    import threading

    graph = build_graph(**GRAPHS["extended-3x3"])
    oracle = TimedOracle(graph, 1, fail_rate=0, sleep=0)
    started, release = threading.Event(), threading.Event()
    futures = []
    seen_at_error = []

    def flaky(src, dst, src_record):
        if (src.name, dst.name) == ("S0", "cs/16/0.01"):
            assert started.wait(30)
            raise RuntimeError("disk full")
        if (src.name, dst.name) == ("S0", "cs/32/0.01"):
            started.set()
            assert release.wait(30)  # still running when the error comes in
        return oracle(src, dst, src_record)

    class ReleaseOnError(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "starting no more" in record.getMessage():
                seen_at_error.append(futures[1][1].running())
                release.set()

    from concurrent.futures import ThreadPoolExecutor

    from opplan.planning.scheduler import log, plan_path_parallel

    def submit(src, dst, src_record):
        futures.append(((src.name, dst.name), pool.submit(flaky, src, dst, src_record)))
        return futures[-1][1]

    handler = ReleaseOnError(level=logging.ERROR)
    log.addHandler(handler)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            with pytest.raises(RuntimeError, match="disk full"):
                plan_path_parallel(graph, submit, 2)
            assert [key for key, _ in futures] == [("S0", "cs/16/0.01"), ("S0", "cs/32/0.01")]  # none after
            assert seen_at_error == [True]  # the other one was running when the error came in
            assert all(f.done() for _, f in futures)  # and it was waited for
            assert futures[1][1].result().finished
    finally:
        log.removeHandler(handler)
        release.set()


def test_ready_transitions_follow_the_dp():
    from opplan.planning.scheduler import ready_transitions

    graph = build_graph(["cs"], [8, 16], [0.1, 0.01], kind="basic")
    oracle = Oracle({(a.name, b.name): 0.1 for a, b in graph.edges}, failed={("S0", "cs/8/0.1")})
    names = [(s.name, d.name, r) for s, d, r in ready_transitions(graph, {})]
    assert names == [("S0", "cs/8/0.1", None), ("S0", "cs/16/0.1", None)]
    done = {("S0", "cs/16/0.1"): oracle(S0, graph.state("cs/16/0.1"), None)}
    # cs/16/0.1 waits for cs/8/0.1 -> cs/16/0.1, which waits for S0 -> cs/8/0.1
    assert [(s.name, d.name) for s, d, _ in ready_transitions(graph, done)] == [("S0", "cs/8/0.1")]
    done[("S0", "cs/8/0.1")] = oracle(S0, graph.state("cs/8/0.1"), None)  # failed: cs/8/0.1 has no model
    ready = ready_transitions(graph, done)
    assert [(s.name, d.name) for s, d, _ in ready] == [("cs/16/0.1", "cs/16/0.01")]
    assert ready[0][2] == done[("S0", "cs/16/0.1")]
