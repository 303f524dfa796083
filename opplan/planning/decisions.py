"""The DP's decision rule (paper §3.2, Eq. 2; docs/design.md §3, §10, §10b).

How :mod:`opplan.planning.dp` chooses ``Sj``'s best predecessor among the finished
transitions into it, and the final state among the reached ones (:class:`Rule`,
``plan.decision``):

- ``argmax`` (the paper): the highest ``V``; ties go to fewer epochs along the whole
  path ``P(Sj)``, then to the smaller source name;
- ``within_se`` (ours, docs/design.md §10): every candidate whose ``V`` lies within ``tie_se``
  standard errors of the best one's (:func:`opplan.stats.margin_in_se`, the SE of the
  difference of two independent scores, from each record's ``se``) counts as a tie;
  ties go to fewer path epochs, then to the higher ``V``, then to the smaller name. A
  candidate without an SE ties only with an equal ``V``, so with every ``se`` unknown
  (or 0, or ``tie_se = 0``) this is ``argmax``.

:func:`choose` makes one decision among :class:`Candidate` options and keeps it as a
:class:`Choice`: the chosen and the runner-up (the best other candidate by ``V``) with
the margin between them in ``V`` and in standard errors, so that coin flips show. A
:class:`Bar` is what a transition into a state must beat not to be pruned (docs/design.md §10b).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from opplan.planning.graph import DECISIONS
from opplan.stats import margin_in_se

FINAL = "final"  # the state name under which the choice of the final state is kept


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Rule:
    """How the DP chooses among candidates (the module docstring; ``plan.decision``)."""

    decision: str = "argmax"
    tie_se: float = 1.0

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")
        if not self.tie_se >= 0:
            raise ValueError(f"tie_se must be >= 0, got {self.tie_se!r}")


ARGMAX = Rule()


@dataclass(frozen=True)
class Bar:
    """What a transition into a state must beat not to be pruned (docs/design.md §10b).

    ``value`` and ``se``: ``V`` and SE of the best finished transition into the state so
    far. Under ``argmax`` a transition whose optimistic bound lies below ``value`` can
    never be chosen; under ``within_se`` only one whose bound lies more than ``tie_se``
    standard errors of the difference below it (the bound's SE being the transition's
    current one), so that a would-be tie is never pruned.
    """

    value: float
    se: float = math.nan
    rule: Rule = field(default_factory=Rule)

    def beats(self, bound: float, se: float = math.nan) -> bool:
        """Whether ``bound`` (optimistic ``V`` of a running transition, SE ``se``) cannot reach this bar."""
        if not (math.isfinite(bound) and math.isfinite(self.value)):
            return False
        if self.rule.decision == "argmax" or bound >= self.value:
            return bound < self.value
        margin = margin_in_se(self.value, bound, self.se, se)
        return not math.isnan(margin) and margin > self.rule.tie_se


@dataclass(frozen=True)
class Candidate:
    """One option of a DP decision: a predecessor of a state, or a reached final state."""

    name: str
    value: float
    se: float
    path_epochs: int


@dataclass(frozen=True)
class Choice:
    """One DP decision: which candidate ``state`` took, and by how much over the runner-up.

    ``state`` is a state's name (choice of its predecessor) or :data:`FINAL` (choice of the
    final state). ``runner_up`` is the best other candidate by ``V`` (``None`` when there was
    only one). ``margin = value - runner_up_value`` and ``margin_se`` is that margin in
    standard errors of the difference: below 1–2 the choice was a coin flip. A negative
    margin means a tie under ``within_se`` went to fewer epochs. ``tie``: the chosen is not
    the highest ``V`` (the rule preferred fewer epochs within the noise).
    """

    state: str
    chosen: str
    value: float
    se: float | None
    runner_up: str | None
    runner_up_value: float | None
    runner_up_se: float | None
    margin: float | None
    margin_se: float | None
    candidates: int
    tie: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "chosen": self.chosen, "value": _finite_or_none(self.value),
                "se": _finite_or_none(self.se), "runner_up": self.runner_up,
                "runner_up_value": _finite_or_none(self.runner_up_value),
                "runner_up_se": _finite_or_none(self.runner_up_se), "margin": _finite_or_none(self.margin),
                "margin_se": _finite_or_none(self.margin_se), "candidates": self.candidates, "tie": self.tie}

    def describe(self) -> str:
        """One log line: ``cs/16/0.01 <- S0 (V 0.512 ± 0.061) over cs/8/0.01 (V 0.498): +0.014 = 0.16 SE``."""
        head = f"{self.state} <- {self.chosen} (V {_fmt(self.value)} ± {_fmt(self.se)})"
        if self.runner_up is None:
            return f"{head}, the only candidate"
        tie = " [within noise: fewer epochs]" if self.tie else ""
        return (f"{head} over {self.runner_up} (V {_fmt(self.runner_up_value)}): {_fmt(self.margin, '+.4f')} = "
                f"{_fmt(self.margin_se, '+.2f')} SE{tie}")


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "?" if value is None or not math.isfinite(value) else format(value, spec)


def _argmax_key(c: Candidate) -> tuple[float, int, str]:
    return (-c.value, c.path_epochs, c.name)


def _ties(best: Candidate, c: Candidate, tie_se: float) -> bool:
    """Whether ``c`` is within ``tie_se`` SEs of ``best`` (unknown SEs: only an equal ``V`` ties)."""
    if c.value == best.value:
        return True
    if not (math.isfinite(best.value) and math.isfinite(c.value)):
        return False
    margin = margin_in_se(best.value, c.value, best.se, c.se)
    return not math.isnan(margin) and margin <= tie_se


def choose(state: str, candidates: list[Candidate], rule: Rule = ARGMAX) -> tuple[int, Choice]:
    """The index of the candidate ``rule`` takes (the module docstring) and the :class:`Choice`."""
    order = sorted(range(len(candidates)), key=lambda i: _argmax_key(candidates[i]))
    best = candidates[order[0]]
    if rule.decision == "argmax":
        pick = order[0]
    else:
        tied = [i for i in order if _ties(best, candidates[i], rule.tie_se)]
        pick = min(tied, key=lambda i: (candidates[i].path_epochs, -candidates[i].value, candidates[i].name))
    chosen = candidates[pick]
    others = [i for i in order if i != pick]
    if not others:
        return pick, Choice(state, chosen.name, chosen.value, _nan_none(chosen.se), None, None, None, None, None, 1)
    runner = candidates[others[0]]
    margin = _nan_none(chosen.value - runner.value)
    margin_se = _nan_none(margin_in_se(chosen.value, runner.value, chosen.se, runner.se))
    return pick, Choice(state, chosen.name, chosen.value, _nan_none(chosen.se), runner.name, runner.value,
                        _nan_none(runner.se), margin, margin_se, len(candidates),
                        tie=pick != order[0] and chosen.value != best.value)


def _nan_none(value: float) -> float | None:
    """Unknown (NaN) as ``None``, so that equal choices compare equal; infinities stay."""
    return None if math.isnan(value) else float(value)
