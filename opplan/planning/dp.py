"""The optimisation path by dynamic programming (paper §3.2, Eq. 2; docs/design.md §3).

A pure function of the graph and a ``run_transition`` callable, so the planner is
tested with a synthetic oracle in milliseconds::

    P(Sj) = <P(Si*), Sj>,   i* = argmax_i V(Si -> Sj)

1. Visit the states in topological order (:attr:`TransitionGraph.states`).
2. For each state ``Sj`` and each predecessor ``Si`` that has a model (``S0`` always;
   any other ``Si`` only if at least one transition into it finished), run
   ``run_transition(Si, Sj, record_of_Si)``. ``record_of_Si`` is the transition record
   whose kept checkpoint is ``Si``'s model (``None`` for ``S0``): the caller starts
   training from ``record_of_Si.checkpoint``.
3. ``Sj``'s best predecessor is chosen among the finished transitions by the decision
   rule (:class:`Rule`, ``plan.decision``):

   - ``argmax`` (the paper): the highest ``V``; ties go to fewer epochs along the whole
     path ``P(Sj)``, then to the smaller source name;
   - ``within_se`` (ours, docs/design.md §10): every candidate whose ``V`` lies within ``tie_se``
     standard errors of the best one's (:func:`opplan.stats.margin_in_se`, the SE of the
     difference of two independent scores, from each record's ``se``) counts as a tie;
     ties go to fewer path epochs, then to the higher ``V``, then to the smaller name. A
     candidate without an SE ties only with an equal ``V``, so with every ``se`` unknown
     (or 0, or ``tie_se = 0``) this is ``argmax``.

   That transition's record becomes ``Sj``'s model. Each choice is kept as a
   :class:`Choice`: the chosen and the runner-up (the best other candidate by ``V``) with
   the margin between them in ``V`` and in standard errors, so that coin flips show.
4. The result is the final state chosen by the same rule among the reached final states
   (their ``V`` and ``se`` are those of their chosen incoming transitions), and its path
   back to ``S0``.

A failed or pruned transition (docs/design.md §10b; :func:`_explore`) has
``V = -inf`` and gives ``Sj`` no model; a state none of whose
transitions finished is never trained from, and its outgoing edges are *skipped*.
Exceptions raised by ``run_transition`` propagate (the caller's runs are resumable);
a transition that merely went wrong should come back as a ``"failed"`` record.

:func:`plan_path_parallel` runs the same DP on K devices: transitions whose source's
model is final (:func:`ready_transitions`) do not depend on each other, so up to K of
them run at once; the choice is then made by :func:`plan_path` over the finished
records, exactly as in sequence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Union

from opplan.errors import OpplanError
from opplan.names import Status
from opplan.planning.graph import DECISIONS, S0, Node, State, TransitionGraph
from opplan.stats import margin_in_se

log = logging.getLogger(__name__)

FINISHED, FAILED, PRUNED = Status.FINISHED, Status.FAILED, Status.PRUNED
Prefer = Literal["score", "fitted", "observed"]
FINAL = "final"  # the state name under which the choice of the final state is kept


class PlanningError(OpplanError):
    """Every route to the final state(s) failed: there is no path to report."""


def _name(node: Node | str) -> str:
    return node if isinstance(node, str) else node.name


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class TransitionRecord:
    """The outcome of one transition ``src -> dst`` (states given as names or objects; stored as names).

    ``score`` is ``V(src -> dst)`` (``-inf`` if failed); :func:`plan_path` stores it as it
    used it. ``fitted`` = ``f(t*)`` of the knee fit, ``observed`` = measured accuracy of the
    kept checkpoint. ``chosen_epoch`` = ``t*``, the epochs this transition contributes to
    the path (0: it keeps its starting model; then ``checkpoint`` should be that model).
    ``epochs_trained`` and ``seconds`` are its compute, kept epochs or not. ``se``: the
    standard error of ``score`` (over the validation videos at the kept epoch; ``None``
    when unknown). ``capped``: stopped by ``plan.max_epochs`` while its curve still rose.
    """

    src: str
    dst: str
    status: str
    score: float = -math.inf
    fitted: float | None = None
    observed: float | None = None
    chosen_epoch: int | None = None
    epochs_trained: int = 0
    seconds: float = 0.0
    run_id: str | None = None
    checkpoint: str | None = None
    se: float | None = None
    capped: bool = False
    bound: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", _name(self.src))
        object.__setattr__(self, "dst", _name(self.dst))
        if self.status not in (FINISHED, FAILED, PRUNED):
            raise ValueError(f"transition {self.src} -> {self.dst}: status must be {FINISHED!r}, {FAILED!r} or "
                             f"{PRUNED!r}, got {self.status!r}")
        if self.status == FINISHED and (self.chosen_epoch is None or self.chosen_epoch < 0):
            raise ValueError(f"finished transition {self.src} -> {self.dst} needs chosen_epoch >= 0, "
                             f"got {self.chosen_epoch!r}")

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def epochs(self) -> int:
        """Epochs this transition contributes to a path (``t*``; 0 when failed)."""
        return int(self.chosen_epoch or 0) if self.finished else 0

    def value(self, prefer: Prefer = "score") -> float:
        """``V`` by ``score``, ``fitted`` or ``observed``; ``-inf`` if failed, missing or not finite."""
        if not self.finished:
            return -math.inf
        v = getattr(self, prefer)
        return float(v) if v is not None and math.isfinite(v) else -math.inf

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "status": self.status, "score": _finite_or_none(self.score),
                "fitted": _finite_or_none(self.fitted), "observed": _finite_or_none(self.observed),
                "chosen_epoch": self.chosen_epoch, "epochs_trained": self.epochs_trained,
                "seconds": float(self.seconds), "run_id": self.run_id, "checkpoint": self.checkpoint,
                "se": _finite_or_none(self.se), "capped": bool(self.capped),
                "bound": _finite_or_none(self.bound)}

    def se_value(self) -> float:
        """``se`` as a float: NaN when unknown."""
        return float(self.se) if self.se is not None else math.nan


@dataclass(frozen=True)
class Rule:
    """How the DP chooses among candidates (module docstring, step 3; ``plan.decision``)."""

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


def bar_for(records: Iterable[TransitionRecord], dst: str, prefer: Prefer, rule: Rule) -> Bar | None:
    """The :class:`Bar` of ``dst`` from the finished ``records`` into it; ``None`` before any finished."""
    into = [r for r in records if r.dst == dst and r.finished and math.isfinite(r.value(prefer))]
    if not into:
        return None
    best = max(into, key=lambda r: r.value(prefer))
    return Bar(best.value(prefer), best.se_value(), rule)


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
    """The index of the candidate ``rule`` takes (module docstring, step 3) and the :class:`Choice`."""
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


RunTransition = Callable[[Node, State, "TransitionRecord | None"], TransitionRecord]


@dataclass(frozen=True)
class PlanResult:
    """The chosen path and everything explored to find it.

    ``path`` starts at ``S0``; ``transitions[k]`` is the record of ``path[k] -> path[k+1]``.
    ``best`` maps every state that got a model to its chosen incoming record, ``choices``
    every such state (and :data:`FINAL`) to its :class:`Choice`; ``rule`` made them.
    """

    path: tuple[Node, ...]
    transitions: tuple[TransitionRecord, ...]
    records: tuple[TransitionRecord, ...]
    best: Mapping[str, TransitionRecord]
    skipped: tuple[tuple[str, str], ...]
    final_scores: Mapping[str, float]
    prefer: str = "score"
    choices: Mapping[str, Choice] = field(default_factory=dict)
    rule: Rule = ARGMAX
    prune: bool = False

    @property
    def final_state(self) -> State:
        return self.path[-1]  # type: ignore[return-value]

    @property
    def score(self) -> float:
        """``V`` of the chosen final state (that of its best incoming transition)."""
        return self.final_scores[self.final_state.name]

    @property
    def epochs(self) -> tuple[int, ...]:
        """Epochs per transition of the path (0 where ``t* = 0``)."""
        return tuple(r.epochs for r in self.transitions)

    @property
    def path_epochs(self) -> int:
        return sum(self.epochs)

    @property
    def total_epochs_trained(self) -> int:
        """Planning compute: epochs trained over every explored transition."""
        return sum(r.epochs_trained for r in self.records)

    @property
    def total_seconds(self) -> float:
        return float(sum(r.seconds for r in self.records))

    @property
    def best_predecessor(self) -> dict[str, str]:
        return {dst: record.src for dst, record in self.best.items()}

    @property
    def path_choices(self) -> tuple[Choice, ...]:
        """The decisions that made the path: each path state's, then the final state's."""
        return tuple(self.choices[n] for n in [*(s.name for s in self.path[1:]), FINAL] if n in self.choices)

    def schedule(self) -> list[tuple[State, int]]:
        """What final training runs (docs/design.md §5): ``(state, epochs)`` along the path, 0-epoch steps left out."""
        return [(s, e) for s, e in zip(self.path[1:], self.epochs) if e > 0]  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        """The content of ``plan.json``."""
        return {
            "path": [n.name for n in self.path],
            "epochs": list(self.epochs),
            "final_state": self.final_state.name,
            "score": _finite_or_none(self.score),
            "prefer": self.prefer,
            "final_scores": {k: _finite_or_none(v) for k, v in self.final_scores.items()},
            "transitions": [r.to_json() for r in self.transitions],
            "explored": [r.to_json() for r in self.records],
            "skipped": [list(e) for e in self.skipped],
            "best_predecessor": self.best_predecessor,
            "decision": {"rule": self.rule.decision, "tie_se": self.rule.tie_se},
            "decisions": [{**c.to_json(), "on_path": c in self.path_choices} for c in self.choices.values()],
            "capped": [f"{r.src} -> {r.dst}" for r in self.records if r.capped],
            "prune": self.prune,
            "pruned": [{"transition": f"{r.src} -> {r.dst}", "bound": _finite_or_none(r.bound),
                        "epochs_trained": r.epochs_trained} for r in self.records if r.status == PRUNED],
            "compute": {"path_epochs": self.path_epochs, "epochs_trained": self.total_epochs_trained,
                        "seconds": self.total_seconds, "transitions": len(self.records),
                        "pruned": sum(r.status == PRUNED for r in self.records)},
        }


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
    """Steps 1–3 of the module docstring; ``quiet`` for replays (:func:`ready_transitions`).

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


# --- K transitions at once ------------------------------------------------------------

Ready = tuple[Node, State, Union[TransitionRecord, None]]
"""``(src, dst, record_of_src)``: what ``run_transition`` would be called with."""
Submit = Callable[[Node, State, Union[TransitionRecord, None]], Future]


def ready_transitions(graph: TransitionGraph, done: Mapping[tuple[str, str], TransitionRecord], *,
                      prefer: Prefer = "score", rule: Rule = ARGMAX, prune: bool = False) -> list[Ready]:
    """The transitions not in ``done`` (keyed ``(src name, dst name)``) that can run now, in DP order.

    A transition is ready when its source's model is final: the source is ``S0``, or
    every transition the DP runs into it is done, so its best predecessor is known. To
    choose it by the DP's own rule, the DP is replayed with an oracle that returns the
    done records; a transition not done yet gets a placeholder (finished, ``V = -inf``,
    0 epochs) and *taints* its destination, whose model is then not final. Because the
    placeholder is finished, the replay still calls every edge downstream; the ones out
    of a tainted state are not ready.
    """
    _check_prefer(prefer)
    tainted: set[Node] = set()
    ready: list[Ready] = []

    def replay(src: Node, dst: State, src_record: TransitionRecord | None, bar: Bar | None = None) -> TransitionRecord:
        record = done.get((src.name, dst.name))
        if record is not None:
            return record
        if src not in tainted:
            ready.append((src, dst, src_record))
        tainted.add(dst)
        return TransitionRecord(src, dst, FINISHED, chosen_epoch=0)  # placeholder: V = -inf

    _explore(graph, replay, prefer, rule, quiet=True, prune=prune)
    return ready


def plan_path_parallel(graph: TransitionGraph, submit: Submit, workers: int, *,
                       prefer: Prefer = "score", rule: Rule = ARGMAX, prune: bool = False) -> PlanResult:
    """:func:`plan_path` with up to ``workers`` transitions running at once.

    ``submit(src, dst, record_of_src)`` starts one transition (as ``run_transition``
    would run it) and returns its future, e.g. ``executor.submit(...)``. Ready
    transitions (:func:`ready_transitions`) are submitted in DP order whenever fewer
    than ``workers`` run. The result, the order of ``records`` included, is
    :func:`plan_path`'s over the finished records: the same as in sequence.

    When a transition raises, nothing more is submitted, what has not started is
    cancelled, the running ones finish (their runs stay resumable), and the first
    exception is raised.

    With ``prune``, ``submit`` also takes ``bar=``: the :class:`Bar` of the transitions into
    the same state done when it is submitted. Which transitions are pruned then depends on
    what finished first (not so the choice, where the bound holds).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    done: dict[tuple[str, str], TransitionRecord] = {}
    running: dict[Future[TransitionRecord], tuple[Node, State]] = {}
    error: BaseException | None = None
    try:
        while True:
            if error is None:
                _submit_ready(graph, done, running, submit, workers, prefer, rule, prune)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                src, dst = running.pop(future)
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is None:
                    done[(src.name, dst.name)] = _checked(future.result(), src, dst)
                elif error is None:
                    log.error("%s -> %s raised %s: waiting for the %d running transition(s), starting no more",
                              src.name, dst.name, type(exc).__name__, len(running))
                    error = exc
                    for other in running:
                        other.cancel()
                else:
                    log.error("%s -> %s raised %s too: %s", src.name, dst.name, type(exc).__name__, exc)
    except BaseException:
        for future in running:
            future.cancel()
        raise
    if error is not None:
        raise error
    return plan_path(graph, lambda s, d, r, bar=None: done[(s.name, d.name)], prefer=prefer, rule=rule, prune=prune)


def _submit_ready(graph: TransitionGraph, done: Mapping[tuple[str, str], TransitionRecord],
                  running: dict[Future[TransitionRecord], tuple[Node, State]], submit: Submit, workers: int,
                  prefer: Prefer, rule: Rule = ARGMAX, prune: bool = False) -> None:
    """Submit ready transitions, in DP order, until ``workers`` run."""
    busy = {(s.name, d.name) for s, d in running.values()}
    for src, dst, src_record in ready_transitions(graph, done, prefer=prefer, rule=rule, prune=prune):
        if len(running) >= workers:
            return
        if (src.name, dst.name) not in busy:
            log.debug("submitting %s -> %s (%d running)", src.name, dst.name, len(running))
            if prune:
                bar = bar_for(done.values(), dst.name, prefer, rule)
                running[submit(src, dst, src_record, bar=bar)] = (src, dst)
            else:
                running[submit(src, dst, src_record)] = (src, dst)
