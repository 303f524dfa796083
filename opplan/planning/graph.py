"""Training states and the transition graph (paper §3.1–3.2, docs/design.md §2).

A state is ``(sampling, clip_length, lr)``; ``S0`` is the starting model. Edges follow
the paper's principles as the authors' ``train_3d_op.py`` realises them:

1. never across sampling strategies;
2. training starts at the highest rate ``r1`` with a short clip: ``S0 -> (s, l, r1)``
   for ``l`` in ``start_lengths`` (default the two shortest lengths);
3. basic graph: a longer clip at the same rate, or a lower rate at the same length;
4. extended graph (the paper's default): additionally a lower rate with a shorter clip.

``max_jump = K`` generalises every edge rule by letting *each index that moves* move
by 1..K steps in its allowed direction, independently:

- basic:    ``(li, rj) -> (li+k, rj)`` and ``(li, rj) -> (li, rj+k)``, ``1 <= k <= K``;
- extended: additionally ``(li, rj) -> (li-a, rj+b)``, ``1 <= a, b <= K``.

A basic edge never moves both indices (no "longer clip and lower rate at once"),
because the paper's basic graph does not have that move at any K. ``S0``'s edges do not
depend on K. With K = 1 and 3 lengths x 3 rates this gives 14 (basic) and 18
(extended) edges per strategy, the authors' graphs exactly.

States that cannot reach a final state, or that ``S0`` cannot reach, are dropped
with their edges, so they are never trained (docs/design.md §3).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Union

from opplan.errors import OpplanError

log = logging.getLogger(__name__)

SAMPLINGS = ("cs", "us")
"""Sampling strategies: consecutive (``cs``) or uniform (``us``) frames (paper §3.1)."""
KINDS = ("basic", "extended")
"""Transition graphs (docs/design.md §2)."""
DECISIONS = ("argmax", "within_se")
"""How the DP picks a predecessor (:mod:`opplan.planning.decisions`): the highest V (the paper) or
ties within ``tie_se`` standard errors broken toward fewer epochs (docs/design.md §10)."""


@dataclass(frozen=True)
class State:
    """A training state: sampling strategy, clip length (frames) and learning rate."""

    sampling: str
    clip_length: int
    lr: float

    @property
    def name(self) -> str:
        """``"cs/16/0.01"``: the form used in params, MLflow tags and plan.json."""
        return f"{self.sampling}/{self.clip_length}/{self.lr:g}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> State:
        """``"cs/16/0.01"`` -> ``State("cs", 16, 0.01)``, the inverse of :attr:`name`; a
        ValueError for text of another form (not checked against a grid: :func:`parse_state`)."""
        parts = name.split("/")
        if len(parts) != 3:
            raise ValueError(f"{name!r} is not 'sampling/clip_length/lr'")
        return cls(parts[0], int(parts[1]), float(parts[2]))


@dataclass(frozen=True)
class InitialState:
    """The starting model ``S0`` (untrained or pre-trained); use the :data:`S0` constant."""

    @property
    def name(self) -> str:
        return "S0"

    def __str__(self) -> str:
        return "S0"

    def __repr__(self) -> str:
        return "S0"


S0 = InitialState()
Node = Union[State, InitialState]


def parse_state(text: str, lengths: Sequence[int], lrs: Sequence[float],
                samplings: Sequence[str] = SAMPLINGS) -> Node:
    """``"cs/16/0.01"`` -> ``State("cs", 16, 0.01)`` (``lr`` snapped to the entry of ``lrs``); ``"S0"`` -> S0.

    Raises :class:`OpplanError` naming what is allowed when ``text`` is not a state of
    the grid ``samplings x lengths x lrs``.
    """
    if text.strip() == "S0":
        return S0
    allowed = (f"write 'sampling/clip_length/lr' with sampling in {list(samplings)}, "
               f"clip_length in {list(lengths)}, lr in {[f'{r:g}' for r in lrs]}")
    try:
        state = State.parse(text.strip())
    except ValueError:
        raise OpplanError(f"{text!r} is not a state: {allowed}") from None
    match = [r for r in lrs if math.isclose(state.lr, r, rel_tol=1e-9)]
    if state.sampling not in samplings or state.clip_length not in lengths or not match:
        raise OpplanError(f"{text!r} is not a state of the graph: {allowed}")
    return State(state.sampling, state.clip_length, float(match[0]))


@dataclass(frozen=True, eq=False)
class TransitionGraph:
    """The pruned transition DAG. ``states`` and ``edges`` are in topological order.

    The order is per sampling strategy (in the order given), then rate index, then
    clip-length index; every edge raises the rate index, or keeps it and lengthens the
    clip, so this order is topological. ``S0`` comes first (:attr:`nodes`). Edges are
    sorted by destination, then source, in that order.
    """

    sampling: tuple[str, ...]
    clip_lengths: tuple[int, ...]
    lrs: tuple[float, ...]
    kind: str
    max_jump: int
    start_lengths: tuple[int, ...]
    states: tuple[State, ...]
    edges: tuple[tuple[Node, State], ...]
    final_states: tuple[State, ...]
    _pred: Mapping[Node, tuple[Node, ...]] = field(repr=False, default_factory=dict)
    _succ: Mapping[Node, tuple[State, ...]] = field(repr=False, default_factory=dict)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """``S0`` then every state, in topological order."""
        return (S0, *self.states)

    def predecessors(self, node: Node) -> tuple[Node, ...]:
        """Sources of the edges into ``node``, in topological order."""
        return self._pred.get(node, ())

    def successors(self, node: Node) -> tuple[State, ...]:
        """Destinations of the edges out of ``node``, in topological order."""
        return self._succ.get(node, ())

    def __contains__(self, node: object) -> bool:
        return node == S0 or node in self._pred

    def state(self, name: str) -> Node:
        """The node called ``name`` (``"S0"`` or ``"cs/16/0.01"``); OpplanError if not in the graph."""
        node = parse_state(name, self.clip_lengths, self.lrs, self.sampling)
        if node not in self:
            raise OpplanError(f"state {name} is not in the (pruned) transition graph")
        return node

    def index(self, state: State) -> tuple[int, int]:
        """``(clip-length index, rate index)`` of ``state`` in the grid."""
        return self.clip_lengths.index(state.clip_length), self.lrs.index(state.lr)

    def to_json(self) -> dict[str, list]:
        """``{"states": [...], "edges": [[src, dst], ...], "final_states": [...]}`` with state names."""
        return {
            "states": [n.name for n in self.nodes],
            "edges": [[a.name, b.name] for a, b in self.edges],
            "final_states": [s.name for s in self.final_states],
        }


def _candidate_edges(sampling: str, lengths: Sequence[int], lrs: Sequence[float], kind: str, max_jump: int,
                     start_lengths: Iterable[int]) -> list[tuple[Node, State]]:
    """Every edge of one strategy's full grid (before pruning); see the module docstring."""
    nl, nr = len(lengths), len(lrs)

    def at(i: int, j: int) -> State:
        return State(sampling, lengths[i], lrs[j])

    edges: list[tuple[Node, State]] = [(S0, State(sampling, length, lrs[0])) for length in start_lengths]
    steps = range(1, max_jump + 1)
    for i in range(nl):
        for j in range(nr):
            edges += [(at(i, j), at(i + k, j)) for k in steps if i + k < nl]  # longer clip
            edges += [(at(i, j), at(i, j + k)) for k in steps if j + k < nr]  # lower rate
            if kind == "extended":  # lower rate with a shorter clip at once
                edges += [(at(i, j), at(i - a, j + b)) for a in steps for b in steps if i - a >= 0 and j + b < nr]
    return edges


def _reachable(start: Iterable[Node], nexts: Mapping[Node, list[Node]]) -> set[Node]:
    seen = set(start)
    queue = deque(seen)
    while queue:
        for other in nexts.get(queue.popleft(), []):
            if other not in seen:
                seen.add(other)
                queue.append(other)
    return seen


def _check_grid(sampling: Sequence[str], lengths: Sequence[int], lrs: Sequence[float], kind: str,
                max_jump: int) -> None:
    if not sampling or len(set(sampling)) != len(sampling) or any(s not in SAMPLINGS for s in sampling):
        raise OpplanError(f"sampling must be distinct values from {list(SAMPLINGS)}, got {list(sampling)}")
    if not lengths or any(b <= a for a, b in zip(lengths, lengths[1:])) or lengths[0] <= 0:
        raise OpplanError(f"clip lengths must be positive and strictly increasing, got {list(lengths)}")
    if not lrs or any(b >= a for a, b in zip(lrs, lrs[1:])) or lrs[-1] <= 0:
        raise OpplanError(f"learning rates must be positive and strictly decreasing, got {list(lrs)}")
    if kind not in KINDS:
        raise OpplanError(f"graph kind must be one of {list(KINDS)}, got {kind!r}")
    if not isinstance(max_jump, int) or max_jump < 1:
        raise OpplanError(f"max_jump must be a positive integer, got {max_jump!r}")


def build_graph(sampling: Sequence[str], clip_lengths: Sequence[int], lrs: Sequence[float], *,
                kind: str = "extended", max_jump: int = 1, start_lengths: Sequence[int] | None = None,
                final_states: Sequence[str | State] | None = None) -> TransitionGraph:
    """The pruned transition graph of docs/design.md §2 (rules in the module docstring).

    ``final_states`` default to ``(s, l_max, r_min)`` per strategy. A strategy with no
    final state among ``final_states`` is pruned entirely. Raises :class:`OpplanError`
    on a bad grid or when no final state is reachable from ``S0``.
    """
    sampling, lengths = tuple(sampling), tuple(int(x) for x in clip_lengths)
    lrs = tuple(float(r) for r in lrs)
    _check_grid(sampling, lengths, lrs, kind, max_jump)
    starts = tuple(lengths[:2]) if start_lengths is None else tuple(int(x) for x in start_lengths)
    if not starts or any(x not in lengths for x in starts):
        raise OpplanError(f"start lengths {list(starts)} must be a non-empty subset of clip lengths {list(lengths)}")
    if final_states is None:
        finals = [State(s, lengths[-1], lrs[-1]) for s in sampling]
    else:
        finals = [f if isinstance(f, State) else parse_state(f, lengths, lrs, sampling) for f in final_states]
        if S0 in finals or not finals:
            raise OpplanError(f"final states must be non-empty training states, got {list(final_states)}")

    edges = [e for s in sampling for e in _candidate_edges(s, lengths, lrs, kind, max_jump, starts)]
    forward: dict[Node, list[Node]] = {}
    backward: dict[Node, list[Node]] = {}
    for a, b in edges:
        forward.setdefault(a, []).append(b)
        backward.setdefault(b, []).append(a)
    keep = _reachable([S0], forward) & _reachable(finals, backward)
    kept_finals = tuple(f for f in dict.fromkeys(finals) if f in keep)
    if not kept_finals:
        raise OpplanError(f"no final state ({', '.join(f.name for f in finals)}) is reachable from S0 with "
                          f"start lengths {list(starts)} in the {kind} graph")

    def key(node: Node) -> tuple[int, int, int]:
        if node == S0:
            return (-1, -1, -1)
        return (sampling.index(node.sampling), lrs.index(node.lr), lengths.index(node.clip_length))

    states = tuple(sorted((n for n in keep if n != S0), key=key))
    kept_edges = tuple(sorted(((a, b) for a, b in set(edges) if a in keep and b in keep),
                              key=lambda e: (key(e[1]), key(e[0]))))
    pred: dict[Node, tuple[Node, ...]] = {s: tuple(a for a, b in kept_edges if b == s) for s in states}
    succ: dict[Node, tuple[State, ...]] = {
        n: tuple(sorted((b for a, b in kept_edges if a == n), key=key)) for n in (S0, *states)
    }
    dropped = len(sampling) * len(lengths) * len(lrs) - len(states)
    if dropped:
        log.debug("transition graph: %d state(s) dropped (unreachable from S0 or from no final state)", dropped)
    return TransitionGraph(sampling, lengths, lrs, kind, max_jump, starts, states, kept_edges, kept_finals,
                           pred, succ)


class GraphSettings(Protocol):
    """What the graph reads of the ``plan:`` section (:class:`opplan.config.PlanParams`), which
    takes its allowed values from this module."""

    sampling: Sequence[str]
    clip_lengths: Sequence[int]
    lrs: Sequence[float]
    graph: str
    max_jump: int
    start_lengths: Sequence[int] | None
    final_states: Sequence[str] | None


def graph_from_params(plan: GraphSettings) -> TransitionGraph:
    """The transition graph of the ``plan:`` section of ``params.yaml``."""
    return build_graph(plan.sampling, plan.clip_lengths, plan.lrs, kind=plan.graph, max_jump=plan.max_jump,
                       start_lengths=plan.start_lengths, final_states=plan.final_states)

