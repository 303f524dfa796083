"""The planner's no-learning diagnosis (docs/design.md §10) on synthetic DP results."""

from __future__ import annotations

import json

from opplan.planning.diagnosis import diagnose, diagnosis_json, diagnosis_tag
from opplan.planning.dp import plan_path
from opplan.planning.graph import build_graph
from opplan.planning.records import TransitionRecord


def planned(observed, epochs, se=0.05):
    """A basic 2x2 graph whose every transition observed ``observed[edge]`` and kept ``epochs[edge]``."""
    graph = build_graph(["cs"], [8, 16], [0.1, 0.01], kind="basic")

    def oracle(src, dst, src_record):
        key = (src.name, dst.name)
        return TransitionRecord(src, dst, "finished", score=observed[key], observed=observed[key], se=se,
                                chosen_epoch=epochs.get(key, 4), epochs_trained=8)

    return plan_path(graph, oracle)


EDGES = [("S0", "cs/8/0.1"), ("S0", "cs/16/0.1"), ("cs/8/0.1", "cs/16/0.1"), ("cs/8/0.1", "cs/8/0.01"),
         ("cs/16/0.1", "cs/16/0.01"), ("cs/8/0.01", "cs/16/0.01")]


def test_a_planning_at_chance_says_so():
    result = planned(dict(zip(EDGES, [0.22, 0.28, 0.18, 0.25, 0.21, 0.27])), {})
    findings = diagnose(result, chance=0.2, delay=3)
    assert [f.code for f in findings] == ["at_chance"]
    assert "within 2 SE of chance" in findings[0].seen and "plan.lrs" in findings[0].change
    assert diagnosis_tag(findings) == "at_chance"
    assert json.loads(json.dumps(diagnosis_json(findings)))["ok"] is False


def test_one_transition_above_the_noise_is_learning():
    result = planned(dict(zip(EDGES, [0.22, 0.28, 0.18, 0.25, 0.45, 0.27])), {})
    assert diagnose(result, chance=0.2, delay=3) == []
    assert diagnosis_tag([]) == "ok" and diagnosis_json([]) == {"ok": True, "findings": []}


def test_a_path_shorter_than_the_knee_delay_is_flagged():
    observed = dict(zip(EDGES, [0.5, 0.6, 0.55, 0.5, 0.7, 0.6]))
    epochs = {("S0", "cs/16/0.1"): 1, ("cs/16/0.1", "cs/16/0.01"): 0}
    findings = diagnose(planned(observed, epochs), chance=0.2, delay=3)
    assert [f.code for f in findings] == ["short_path"]
    assert "1 epoch(s)" in findings[0].seen and "1 of its 2 transitions kept their start model" in findings[0].seen
    assert diagnose(planned(observed, epochs), chance=0.2, delay=1) == []
