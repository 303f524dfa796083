"""The DP with K transitions at once (docs/design.md §3, "Workers"; §10b with pruning).

:func:`plan_path_parallel` runs the DP of :mod:`opplan.planning.dp` on K devices:
transitions whose source's model is final (:func:`ready_transitions`) do not depend on
each other, so up to K of them run at once; the choice is then made by
:func:`~opplan.planning.dp.plan_path` over the finished records, exactly as in sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Union

from opplan.planning.decisions import ARGMAX, Bar, Rule
from opplan.planning.dp import _check_prefer, _checked, _explore, bar_for, plan_path
from opplan.planning.graph import Node, State, TransitionGraph
from opplan.planning.records import FINISHED, PlanResult, Prefer, TransitionRecord

log = logging.getLogger(__name__)

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
