"""The planning core (paper §3, docs/design.md §2–4): pure Python, no torch, no MLflow.

- :mod:`opplan.planning.graph`: training states and the transition graph (§3.1–3.2).
- :mod:`opplan.planning.knee`: knee-point fitting and the online stopping rule (§3.3).
- :mod:`opplan.planning.dp`: the dynamic programme over the graph (§3.2).
"""
