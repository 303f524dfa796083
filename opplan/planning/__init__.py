"""The planning core (paper §3, docs/design.md §2–4): pure Python, no torch, no MLflow.

- :mod:`opplan.planning.graph`: training states and the transition graph (§3.1–3.2).
- :mod:`opplan.planning.fitting`: the knee functions of Table 1, one table, and their fit (§3.3).
- :mod:`opplan.planning.knee`: the online stopping rule on those fits (§3.3).
- :mod:`opplan.planning.dp`: the dynamic programme over the graph (§3.2).
"""
