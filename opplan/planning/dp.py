"""The optimisation path by dynamic programming (paper §3.2, Eq. 2; docs/design.md §3).

A pure function of the graph and a ``run_transition`` callable, so the planner is
tested with a synthetic oracle in milliseconds::

    P(Sj) = <P(Si*), Sj>,   i* = argmax_i V(Si -> Sj)

1. Visit the states in topological order (:attr:`TransitionGraph.states`).
2. For each state ``Sj`` and each predecessor ``Si`` that has a model (``S0`` always;
   any other ``Si`` only if at least one transition into it finished), run
   ``run_transition(Si, Sj, record_of_Si)``. ``record_of_Si`` is the transition record
   (:class:`~opplan.planning.records.TransitionRecord`) whose kept checkpoint is ``Si``'s
   model (``None`` for ``S0``): the caller starts training from ``record_of_Si.checkpoint``.
3. ``Sj``'s best predecessor is chosen among the finished transitions by the decision
   rule (:mod:`opplan.planning.decisions`: ``argmax``, the paper's, or ``within_se``).
   That transition's record becomes ``Sj``'s model. Each choice is kept as a
   :class:`~opplan.planning.decisions.Choice`.
4. The result (:class:`~opplan.planning.records.PlanResult`) is the final state chosen by
   the same rule among the reached final states (their ``V`` and ``se`` are those of their
   chosen incoming transitions), and its path back to ``S0``.

A failed or pruned transition (docs/design.md §10b; :func:`_explore`, :func:`bar_for`) has
``V = -inf`` and gives ``Sj`` no model; a state none of whose
transitions finished is never trained from, and its outgoing edges are *skipped*.
Exceptions raised by ``run_transition`` propagate (the caller's runs are resumable);
a transition that merely went wrong should come back as a ``"failed"`` record.

:mod:`opplan.planning.scheduler` runs the same DP on K devices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from opplan.errors import OpplanError
from opplan.planning.decisions import ARGMAX, FINAL, Bar, Candidate, Choice, Rule, choose
from opplan.planning.graph import S0, Node, State, TransitionGraph
from opplan.planning.records import PlanResult, Prefer, TransitionRecord

log = logging.getLogger(__name__)


class PlanningError(OpplanError):
    """Every route to the final state(s) failed: there is no path to report."""


def bar_for(records: Iterable[TransitionRecord], dst: str, prefer: Prefer, rule: Rule) -> Bar | None:
    """The :class:`Bar` of ``dst`` from the finished ``records`` into it; ``None`` before any finished."""
    into = [r for r in records if r.dst == dst and r.finished and math.isfinite(r.value(prefer))]
    if not into:
        return None
    best = max(into, key=lambda r: r.value(prefer))
    return Bar(best.value(prefer), best.se_value(), rule)


RunTransition = Callable[[Node, State, "TransitionRecord | None"], TransitionRecord]


def _checked(record: object, src: Node, dst: State) -> TransitionRecord:
    if not isinstance(record, TransitionRecord):
        raise TypeError(f"run_transition({src.name}, {dst.name}) returned {type(record).__name__}, "
                        "not a TransitionRecord")
    if (record.src, record.dst) != (src.name, dst.name):
        raise ValueError(f"run_transition({src.name}, {dst.name}) returned the record of "
                         f"{record.src} -> {record.dst}")
    return record


@dataclass
class _Explored:
    """Steps 1–3 of the DP: what every state got."""

    best: dict[Node, TransitionRecord] = field(default_factory=dict)
    parent: dict[Node, Node] = field(default_factory=dict)
    value: dict[Node, float] = field(default_factory=dict)
    path_epochs: dict[Node, int] = field(default_factory=lambda: {S0: 0})
    records: list[TransitionRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    choices: dict[str, Choice] = field(default_factory=dict)


def _sources(graph: TransitionGraph, dst: State, dp: _Explored, prune: bool) -> list[Node]:
    """``dst``'s predecessors in the order the DP runs them: the graph's, or with pruning the
    most promising first (the highest ``V`` of the source's own model; ``S0`` last), so that
    the bar is high early (docs/design.md §10b)."""
    sources = list(graph.predecessors(dst))
    if prune:
        sources.sort(key=lambda s: -dp.value.get(s, -math.inf))  # stable: ties keep the graph's order
    return sources


def _explore(graph: TransitionGraph, run_transition: RunTransition, prefer: Prefer, rule: Rule = ARGMAX, *,
             quiet: bool = False, prune: bool = False) -> _Explored:
    """Steps 1–3 of the module docstring; ``quiet`` for replays
    (:func:`~opplan.planning.scheduler.ready_transitions`).

    With ``prune`` the predecessors run most promising first (:func:`_sources`) and
    ``run_transition`` is called with ``bar=`` the :class:`Bar` of the finished transitions
    into ``dst`` so far (``None`` for the first); a transition that returns a ``"pruned"``
    record is, like a failed one, not a candidate."""
    info = log.debug if quiet else log.info
    warn = log.debug if quiet else log.warning
    dp = _Explored()
    for dst in graph.states:  # 1. topological order
        candidates: list[tuple[Candidate, Node, TransitionRecord]] = []
        for src in _sources(graph, dst, dp, prune):
            if src != S0 and src not in dp.best:  # 2. no model at src
                dp.skipped.append((src.name, dst.name))
                continue
            if prune:
                bar = bar_for((r for _, _, r in candidates), dst.name, prefer, rule)
                record = _checked(run_transition(src, dst, dp.best.get(src), bar=bar), src, dst)
            else:
                record = _checked(run_transition(src, dst, dp.best.get(src)), src, dst)
            v = record.value(prefer)
            record = replace(record, score=v)
            dp.records.append(record)
            info("V(%s -> %s) = %s (%s, t* = %s)", src.name, dst.name, f"{v:.4f}", record.status,
                 record.chosen_epoch)
            if record.finished:
                option = Candidate(src.name, v, record.se_value(), dp.path_epochs[src] + record.epochs)
                candidates.append((option, src, record))
        if candidates:  # 3. best predecessor
            pick, choice = choose(dst.name, [c for c, _, _ in candidates], rule)
            _, src, record = candidates[pick]
            dp.best[dst], dp.parent[dst], dp.value[dst] = record, src, record.value(prefer)
            dp.path_epochs[dst] = dp.path_epochs[src] + record.epochs
            dp.choices[dst.name] = choice
            info("decision %s", choice.describe())
        else:
            warn("no transition into %s finished: it is not trained from", dst.name)
    return dp


def _check_prefer(prefer: str) -> None:
    if prefer not in ("score", "fitted", "observed"):
        raise ValueError(f"prefer must be 'score', 'fitted' or 'observed', got {prefer!r}")


def plan_path(graph: TransitionGraph, run_transition: RunTransition, *, prefer: Prefer = "score",
              rule: Rule = ARGMAX, prune: bool = False) -> PlanResult:
    """Explore ``graph`` with ``run_transition`` and return the best path (see the module docstring).

    ``prefer`` picks ``V`` from each record: its ``score`` (default; the caller decides,
    e.g. by ``plan.score``), or its ``fitted`` / ``observed`` value. Records are kept with
    ``score`` set to the ``V`` used. ``rule`` chooses among candidates (step 3; default the
    paper's argmax). ``prune``: see :func:`_explore` (``run_transition`` then takes ``bar=``).
    Raises :class:`PlanningError` when no final state got a model.
    """
    _check_prefer(prefer)
    dp = _explore(graph, run_transition, prefer, rule, prune=prune)
    reached = [f for f in graph.final_states if f in dp.best]  # 4. best final state
    if not reached:
        failed = sum(not r.finished for r in dp.records)
        raise PlanningError(
            f"every route to the final state(s) {', '.join(f.name for f in graph.final_states)} failed "
            f"({failed} of {len(dp.records)} transitions run failed, {len(dp.skipped)} skipped); see the failed "
            "transitions' runs for their errors")
    options = [Candidate(f.name, dp.value[f], dp.best[f].se_value(), dp.path_epochs[f]) for f in reached]
    pick, choice = choose(FINAL, options, rule)
    final = reached[pick]
    log.info("decision %s", choice.describe())
    path: list[Node] = [final]
    while path[-1] != S0:
        path.append(dp.parent[path[-1]])
    path.reverse()
    return PlanResult(
        path=tuple(path),
        transitions=tuple(dp.best[s] for s in path[1:]),
        records=tuple(dp.records),
        best={s.name: r for s, r in dp.best.items()},
        skipped=tuple(dp.skipped),
        final_scores={f.name: dp.value[f] for f in reached},
        prefer=prefer,
        choices={**dp.choices, FINAL: choice},
        rule=rule,
        prune=prune,
    )
