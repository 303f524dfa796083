"""Planning that notices when it learned nothing (docs/design.md §10, "Noise").

A pure function of the DP's result: no torch, no MLflow. Two findings, each with what was
seen and what to change:

- ``at_chance``: every finished transition's kept observed score lies within
  ``CHANCE_SE`` standard errors of chance (:func:`opplan.stats.chance_level` of the
  validation labels for ``plan.metric``), or below it. The curves were flat within noise:
  the model learned nothing the planner could see.
- ``short_path``: the chosen path trains fewer epochs in all than the knee delay ``T``,
  i.e. less than one transition needs just to show its knee; the DP mostly kept start
  models (``t* = 0``).

A planning with a finding still writes ``plan.json``, but says so (a WARNING per finding,
``diagnosis`` in ``plan.json``, the ``opplan.diagnosis`` tag on the planning run) instead of
handing a near-untrained model to ``final`` as if it were a plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from opplan.planning.records import PlanResult
from opplan.stats import within_noise_of

CHANCE_SE = 2.0
"""A transition counts as "at chance" when its observed score is at most this many SEs above chance."""

ADVICE_RATES = ("try higher learning rates (plan.lrs) or check the data and labels (a model that cannot beat "
                "chance on its own training data has a data problem)")
ADVICE_LONGER = ("let transitions train longer before the knee is trusted: a larger plan.delay and plan.max_epochs")
ADVICE_NOISE = ("make the planning signal less noisy: more internal-validation videos (prepare.val_size), "
                "plan.val_clips > 1, or plan.metric: prob")


@dataclass(frozen=True)
class Finding:
    """One thing the planning got wrong: ``code`` (``at_chance`` | ``short_path``), what was seen, what to change."""

    code: str
    seen: str
    change: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "seen": self.seen, "change": self.change}


def diagnose(result: PlanResult, *, chance: float, delay: int, metric: str = "top1",
             z: float = CHANCE_SE) -> list[Finding]:
    """The findings of the module docstring for ``result``; empty when the planning looks sound.

    ``chance`` is the chance level of ``metric`` on the validation split, ``delay`` the knee
    delay ``T``. Each record's ``observed`` value and ``se`` are compared; a record without
    an SE is compared without noise.
    """
    findings = []
    finished = [r for r in result.records if r.finished and r.observed is not None and math.isfinite(r.observed)]
    if finished and math.isfinite(chance) and all(within_noise_of(r.observed, chance, r.se_value(), z)
                                                  for r in finished):
        best = max(finished, key=lambda r: r.observed)
        findings.append(Finding(
            "at_chance",
            f"all {len(finished)} finished transitions scored within {z:g} SE of chance ({metric} {chance:.3f}); "
            f"the best, {best.src} -> {best.dst}, {best.observed:.3f} ± {_se(best.se)}: the curves were flat "
            "within noise and the planned path reflects noise, not learning",
            f"{ADVICE_RATES}; {ADVICE_LONGER}; {ADVICE_NOISE}"))
    if result.path_epochs < delay:
        findings.append(Finding(
            "short_path",
            f"the chosen path trains {result.path_epochs} epoch(s) in all, fewer than the knee delay "
            f"plan.delay = {delay} ({sum(e == 0 for e in result.epochs)} of its {len(result.epochs)} transitions "
            "kept their start model)",
            f"{ADVICE_LONGER}; {ADVICE_RATES}"))
    return findings


def diagnosis_json(findings: list[Finding]) -> dict[str, Any]:
    """``plan.json``'s ``diagnosis``: ``ok`` and the findings."""
    return {"ok": not findings, "findings": [f.to_json() for f in findings]}


def diagnosis_tag(findings: list[Finding]) -> str:
    """The planning run's ``opplan.diagnosis`` tag: ``ok`` or the codes, comma-separated."""
    return ",".join(f.code for f in findings) or "ok"


def _se(se: float | None) -> str:
    return "?" if se is None or not math.isfinite(se) else f"{se:.3f}"
