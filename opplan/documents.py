"""The documents the stages hand each other (docs/design.md §11b): ``plan.json`` (``plan``),
``final/run.json`` (``final``) and ``baselines.json`` (``baselines``), as frozen, typed models.

Every stage that writes one builds it here and every reader reads it here, so a key is
named in one place. ``to_json()`` gives exactly the keys the document was made with, in
the order of the fields below, numbers as they came (an ``int`` stays an ``int``); written
with :func:`opplan.fileio.atomic_write_json` that is the file a stage wrote before these
models existed, plus ``schema_version`` first. A file without ``schema_version`` is of
version 1 (those written before the field was), and is written back without it.
``read(path)`` refuses a missing or invalid file in one line naming the file and the field.

Keys that version 1 files may lack, because they came later (pruning: ``prune``,
``pruned``, ``compute.pruned``, each transition's ``bound``; ``seeds`` before the final
record is complete; ``optimizer_steps``/``planned_steps`` of a record restored from a run
that did not log them; ``config_hash`` of a switched-off grid), stay absent on reading.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from opplan.errors import OpplanError
from opplan.fileio import atomic_write_json
from opplan.planning.graph import S0

SCHEMA_VERSION = 1
"""Written into every new document as ``schema_version``; a reader refuses any other."""


def _number(value: Any) -> int | float:
    """A JSON number, kept as it is: ``int`` or ``float`` (``NaN`` too: MLflow may log one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _count(value: Any) -> int:
    """A whole number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected non-empty text, got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


Number = Annotated[Union[int, float], PlainValidator(_number)]
Count = Annotated[int, PlainValidator(_count)]
Text = Annotated[str, PlainValidator(_text)]
Flag = Annotated[bool, PlainValidator(_flag)]
D = TypeVar("D", bound="Document")


class _Part(BaseModel):
    """A part of a document: frozen, no unknown keys, written back with the keys it was read with."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class Document(_Part):
    """A whole file: ``schema_version``, ``read``/``write``, refusals naming file and field."""

    FILE: ClassVar[str]
    STAGE: ClassVar[str]  # the stage that writes it (named in refusals)
    schema_version: Literal[1] = SCHEMA_VERSION

    @classmethod
    def new(cls: type[D], fields: Mapping[str, Any]) -> D:
        """A new document of the current version (``schema_version`` written) from ``fields``."""
        return cls.from_json({"schema_version": SCHEMA_VERSION, **fields}, source=f"the new {cls.FILE}")

    @classmethod
    def from_json(cls: type[D], obj: Any, *, source: str | None = None) -> D:
        """``obj`` (parsed JSON) as this document; :class:`OpplanError` naming ``source`` and the field."""
        source = source or cls.FILE
        if not isinstance(obj, dict):
            raise OpplanError(f"{source}: expected a JSON object, got {type(obj).__name__}{cls._hint()}")
        version = obj.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise OpplanError(f"{source}: schema_version {version!r} is not one this opplan reads "
                              f"({SCHEMA_VERSION}): written by another opplan version{cls._hint()}")
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            errors = exc.errors()
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise OpplanError(f"{source}: {describe(errors[0])}{more}{cls._hint()}") from None

    @classmethod
    def read(cls: type[D], path: str | Path) -> D:
        """The document in ``path``; refused in one line when missing, not JSON or invalid."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise OpplanError(f"{path} not found{cls._hint()}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise OpplanError(f"{path}: cannot read it ({exc}){cls._hint()}") from None
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise OpplanError(f"{path}: not valid JSON ({exc}){cls._hint()}") from None
        return cls.from_json(obj, source=str(path))

    def write(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def _hint(cls) -> str:
        return f"; it is made by the `{cls.STAGE}` stage (`dvc repro {cls.STAGE}`)"


def describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``field transitions[0].chosen_epoch: <what is wrong>``."""
    where = ""
    for part in error["loc"]:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    if error["type"] == "missing":
        return f"field {where} is missing"
    if error["type"] == "extra_forbidden":
        return f"unknown field {where}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"field {where}: {message}" if where else message


# --- plan.json ---------------------------------------------------------------------------

class Transition(_Part):
    """One explored transition (:meth:`opplan.planning.records.TransitionRecord.to_json`)."""

    src: Text
    dst: Text
    status: Literal["finished", "failed", "pruned"]
    score: Number | None
    fitted: Number | None
    observed: Number | None
    chosen_epoch: Count | None
    epochs_trained: Count
    seconds: Number
    run_id: str | None
    checkpoint: str | None
    se: Number | None
    capped: Flag
    bound: Number | None = None  # optimistic V of a pruned transition (absent before pruning existed)

    @property
    def epochs(self) -> int:
        """Epochs this transition contributes to the path (``t*``; 0 unless finished)."""
        return int(self.chosen_epoch or 0) if self.status == "finished" else 0


class MlflowRef(_Part):
    tracking_uri: str
    experiment_id: str
    planning_run_id: Text


class DecisionRule(_Part):
    rule: Text
    tie_se: Number


class Decision(_Part):
    """One DP choice (:meth:`opplan.planning.decisions.Choice.to_json`), and whether it made the path."""

    state: Text
    chosen: Text
    value: Number | None
    se: Number | None
    runner_up: str | None
    runner_up_value: Number | None
    runner_up_se: Number | None
    margin: Number | None
    margin_se: Number | None
    candidates: Count
    tie: Flag
    on_path: Flag


class Pruned(_Part):
    transition: Text
    bound: Number | None
    epochs_trained: Count


class PlanCompute(_Part):
    path_epochs: Count
    epochs_trained: Count
    seconds: Number
    transitions: Count
    pruned: Count = 0


class Finding(_Part):
    """A no-learning finding (:class:`opplan.planning.diagnosis.Finding`)."""

    code: Text
    seen: str
    change: str


class Diagnosis(_Part):
    ok: Flag
    findings: tuple[Finding, ...]


class PlanDocument(Document):
    """``plan.json``: the chosen path and everything explored to find it (docs/design.md §3)."""

    FILE: ClassVar[str] = "plan.json"
    STAGE: ClassVar[str] = "plan"
    config_hash: Text
    mlflow: MlflowRef
    path: tuple[Text, ...] = Field(min_length=1)
    epochs: tuple[Count, ...]
    final_state: Text
    score: Number | None
    prefer: Literal["score", "fitted", "observed"]
    final_scores: dict[str, Number | None]
    transitions: tuple[Transition, ...]
    explored: tuple[Transition, ...]
    skipped: tuple[tuple[Text, Text], ...]
    best_predecessor: dict[str, str]
    decision: DecisionRule
    decisions: tuple[Decision, ...]
    capped: tuple[str, ...]
    prune: Flag = False
    pruned: tuple[Pruned, ...] = ()
    compute: PlanCompute
    diagnosis: Diagnosis

    @model_validator(mode="after")
    def _path_is_the_transitions(self) -> PlanDocument:
        """``path`` starts at S0 and ends at ``final_state``; ``transitions[k]`` and ``epochs[k]``
        are those of ``path[k] -> path[k+1]``."""
        if self.path[0] != S0.name:
            raise ValueError(f"field path starts at {self.path[0]!r}, not at {S0.name}")
        if self.path[-1] != self.final_state:
            raise ValueError(f"field final_state is {self.final_state!r}, but path ends at {self.path[-1]!r}")
        steps = len(self.path) - 1
        for name, values in (("transitions", self.transitions), ("epochs", self.epochs)):
            if len(values) != steps:
                raise ValueError(f"field {name} has {len(values)} entries, but path has {steps} transitions")
        for k, (step, epochs) in enumerate(zip(self.transitions, self.epochs)):
            if (step.src, step.dst) != self.path[k:k + 2]:
                raise ValueError(f"field transitions[{k}] is {step.src} -> {step.dst}, but path[{k}:{k + 2}] is "
                                 f"{self.path[k]} -> {self.path[k + 1]}")
            if step.epochs != epochs:
                raise ValueError(f"field epochs[{k}] is {epochs}, but transitions[{k}] keeps {step.epochs}")
        return self

    @property
    def planning_run_id(self) -> str:
        return self.mlflow.planning_run_id


# --- final/run.json ----------------------------------------------------------------------

class ScheduledEpochEntry(_Part):
    epoch: Count
    state: Text
    lr: Number


class Retrain(_Part):
    """One seeded retrain on the full training set, scored on the held-out split
    (:func:`opplan.stages.repeats.retrain_and_score`)."""

    run_id: Text
    seed: Count
    status: Text
    top1: Number | None
    single_view_top1: Number | None
    compute_seconds: Number
    epochs_trained: Number


class FinalRecord(Document):
    """``final/run.json``: the final run, its schedule and the digest of ``final/model.pt``."""

    FILE: ClassVar[str] = "final/run.json"
    STAGE: ClassVar[str] = "final"
    run_id: Text
    config_hash: Text
    planning_run_id: Text
    final_state: Text
    epochs: Count
    epochs_trained: Count
    clips_seen: Count
    compute_seconds: Number
    optimizer_steps: Count | None = None
    planned_steps: Count | None = None
    schedule: tuple[ScheduledEpochEntry, ...]
    losses: tuple[Number, ...]
    model_sha256: Text
    seeds: tuple[Retrain, ...] | None = None  # further seeds' retrains; absent until they ran

    @model_validator(mode="after")
    def _one_entry_per_epoch(self) -> FinalRecord:
        if len(self.schedule) != self.epochs:
            raise ValueError(f"field schedule has {len(self.schedule)} entries, but epochs is {self.epochs}")
        return self

    def path_steps(self) -> list[ScheduledEpochEntry]:
        """The schedule's segments: the first epoch of each run of equal states."""
        steps: list[ScheduledEpochEntry] = []
        for row in self.schedule:
            if not steps or steps[-1].state != row.state:
                steps.append(row)
        return steps


# --- baselines.json ----------------------------------------------------------------------

class Candidate(_Part):
    """One grid candidate's run (:func:`opplan.stages.baselines.run_candidate`)."""

    name: Text
    sampling: Text
    schedule: Text
    decay: Text
    epochs: Count
    run_id: Text
    status: Text
    top1: Number | None
    val_top1: Number | None
    compute_seconds: Number
    clips_seen: Number
    epochs_trained: Number


class GridCost(_Part):
    candidates: Count
    epochs: Number
    clips_seen: Number
    compute_seconds: Number


class BaselinesDocument(Document):
    """``baselines.json``: every candidate, HS (``selected``, on internal validation), its
    retrains, the oracle and the grid's cost (docs/design.md §6)."""

    FILE: ClassVar[str] = "baselines.json"
    STAGE: ClassVar[str] = "baselines"
    enabled: Flag
    config_hash: Text | None = None  # absent when the grid is switched off
    candidates: tuple[Candidate, ...]
    selected: Candidate | None
    retrains: tuple[Retrain, ...]
    oracle: Candidate | None
    grid: GridCost | None

    @model_validator(mode="after")
    def _grid_sums_candidates(self) -> BaselinesDocument:
        if self.enabled and (self.config_hash is None or self.grid is None):
            missing = "config_hash" if self.config_hash is None else "grid"
            raise ValueError(f"field {missing} is missing (the grid is enabled)")
        if self.grid is not None and self.grid.candidates != len(self.candidates):
            raise ValueError(f"field grid.candidates is {self.grid.candidates}, but candidates has "
                             f"{len(self.candidates)} entries")
        return self

