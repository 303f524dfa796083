"""What a transition and a planning produce, with their JSON (docs/design.md §3, §10, §10b, §11b).

- :class:`TransitionRecord`: the outcome of one transition ``Si -> Sj``, ``"finished"``,
  ``"failed"`` or ``"pruned"`` (:data:`FINISHED`, :data:`FAILED`, :data:`PRUNED`), with its
  ``V``, standard error, kept epochs and compute; one entry of ``plan.json``'s
  ``transitions`` and ``explored``.
- :class:`PlanResult`: the path :func:`opplan.planning.dp.plan_path` chose and everything
  explored to find it, its decisions (:class:`~opplan.planning.decisions.Choice`) included;
  :meth:`PlanResult.to_json` is the content of ``plan.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from opplan.names import Status
from opplan.planning.decisions import ARGMAX, FINAL, Choice, Rule, _finite_or_none
from opplan.planning.graph import Node, State

FINISHED, FAILED, PRUNED = Status.FINISHED, Status.FAILED, Status.PRUNED
Prefer = Literal["score", "fitted", "observed"]


def _name(node: Node | str) -> str:
    return node if isinstance(node, str) else node.name


@dataclass(frozen=True)
class TransitionRecord:
    """The outcome of one transition ``src -> dst`` (states given as names or objects; stored as names).

    ``score`` is ``V(src -> dst)`` (``-inf`` if failed); :func:`~opplan.planning.dp.plan_path`
    stores it as it used it. ``fitted`` = ``f(t*)`` of the knee fit, ``observed`` = measured
    accuracy of the kept checkpoint. ``chosen_epoch`` = ``t*``, the epochs this transition
    contributes to the path (0: it keeps its starting model; then ``checkpoint`` should be
    that model). ``epochs_trained`` and ``seconds`` are its compute, kept epochs or not. ``se``: the
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
class PlanResult:
    """The chosen path and everything explored to find it.

    ``path`` starts at ``S0``; ``transitions[k]`` is the record of ``path[k] -> path[k+1]``.
    ``best`` maps every state that got a model to its chosen incoming record, ``choices``
    every such state (and :data:`~opplan.planning.decisions.FINAL`) to its
    :class:`~opplan.planning.decisions.Choice`; ``rule`` made them.
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
