"""The planning core (paper §3, docs/design.md §2–4): pure Python, no torch, no MLflow.

- :mod:`opplan.planning.graph`: training states and the transition graph (§3.1–3.2).
- :mod:`opplan.planning.fitting`: the knee functions of Table 1, one table, and their fit (§3.3).
- :mod:`opplan.planning.knee`: the online stopping rule on those fits (§3.3).
- :mod:`opplan.planning.dp`: the dynamic programme over the graph (§3.2).
- :mod:`opplan.planning.decisions`: its decision rule, argmax or within ``tie_se`` SEs (§3, §10).
- :mod:`opplan.planning.records`: what a transition and a planning produce (§3, §11b).
- :mod:`opplan.planning.scheduler`: the same DP with K transitions at once (§3).
"""
