"""What each DVC stage depends on, in one place (docs/design.md §13).

``dvc.yaml``'s ``params`` of every stage are :func:`stage_params` (tests/test_stage_params.py
compares them), and the hashes that identify a planning and a baseline grid are computed from
exactly the same keys (:func:`result_values`), so that an edit DVC reruns a stage for is the
edit that stage's runs are told apart by, and no other.

A key is in one of three groups:

- ``RUNTIME``: changes only how fast something runs (worker processes, loader prefetching,
  progress lines, retries, distributed launch); no stage depends on it.
- ``WHERE``: where a stage runs or logs (``device``, the tracking store); a stage reruns when
  it changes, but its runs keep their identity (the store named by ``tracking`` is searched).
- everything else: what is computed; each stage lists the sections (or keys) its code reads.
"""

from __future__ import annotations

from typing import Any

from opplan.config import MOVED_TO_RUNTIME, Params

RUNTIME = ("runtime", "distributed")
"""Sections of settings that change only speed: worker processes, loader prefetching, the
validation cache, progress lines, retries (``runtime``), and the distributed launch. With N
distributed processes BatchNorm sees batch/N clips per device, as
``train.micro_batch_per_length`` does in one process (README, "Scaling out")."""

LOGGING_ONLY = ("tracking.system_metrics_seconds",)
"""How often MLflow's system metrics are sampled: what is logged beside a run, never its result;
no stage depends on it (its section is listed key by key, as ``WHERE``)."""

WHERE = ("device", "tracking.uri", "tracking.experiment")

SHORTHANDS = ("plan.setting",)
"""Keys that set other keys: a stage that reads those depends on them (DVC compares the file as
written), but the hashes take the values they set instead (``plan.setting: authors`` hashes as
the keys it sets, written out)."""

_PLANNING = ("seed", "prepare", "model", "train", "plan")
"""What a transition's result depends on: ``plan`` keeps its runs under this, and every stage
that checks ``plan.json`` or ``final/run.json`` against the current params reads it too."""

STAGE_READS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "data", "prepare"),
    "plan": _PLANNING,
    "final": (*_PLANNING, "evaluate", "final.match_steps", "final.seeds"),
    "evaluate": (*_PLANNING, "evaluate", "final.register_as"),  # evaluate registers the model it tested
    # the grid trains its own schedules over plan.clip_lengths and plan.lrs, and scores them
    # with planning's signal (plan.metric on plan.val_clips clips) as final does
    "baselines": ("seed", "prepare", "model", "train", "plan.clip_lengths", "plan.lrs", "plan.metric",
                  "plan.val_clips", "plan.setting", "evaluate", "final.match_steps", "final.seeds", "baselines"),
    "report": ("report",),
}
"""The params each stage's code reads (besides ``WHERE``), as sections or ``section.key``."""

STAGE_WHERE: dict[str, tuple[str, ...]] = {
    "prepare": (),  # neither picks a device nor logs
    "report": ("tracking.uri", "tracking.experiment"),
}
"""The ``WHERE`` keys of a stage, where not all of them."""


def _fields(section: str) -> list[str]:
    """The keys of a section as a params file writes them (the speed-only ones under ``runtime``)."""
    model = Params.model_fields[section].annotation
    moved = {key for where, key in MOVED_TO_RUNTIME.values() if where == section}
    return [key for key in getattr(model, "model_fields", {}) if key not in moved]


def all_keys() -> list[str]:
    """Every setting of a params file: ``seed``, ``device`` and ``section.key``."""
    keys: list[str] = []
    for name in Params.model_fields:
        fields = _fields(name)
        keys += [f"{name}.{key}" for key in fields] if fields else [name]
    return keys


def runtime_keys() -> set[str]:
    return {f"{section}.{key}" for section in RUNTIME for key in _fields(section)} | set(LOGGING_ONLY)


def _expand(entry: str) -> list[str]:
    """A section name -> its keys; a key or top-level setting -> itself."""
    if "." in entry or not _fields(entry):
        return [entry]
    return [f"{entry}.{key}" for key in _fields(entry)]


def result_keys(stage: str) -> list[str]:
    """The keys a stage's results depend on (not ``WHERE``, not ``RUNTIME``)."""
    return [key for entry in STAGE_READS[stage] for key in _expand(entry)]


def stage_params(stage: str) -> list[str]:
    """``dvc.yaml``'s ``params`` for a stage: ``STAGE_READS`` and its ``WHERE`` keys."""
    where = STAGE_WHERE.get(stage, WHERE)
    listed = list(STAGE_READS[stage])
    return [*where[:1], *listed, *where[1:]] if where[:1] == ("device",) else [*listed, *where]


def result_values(params: Params, stage: str) -> dict[str, Any]:
    """The values of :func:`result_keys` but ``SHORTHANDS``, nested by section as in a params file."""
    dumped = params.model_dump(mode="json")
    values: dict[str, Any] = {}
    for key in result_keys(stage):
        if key in SHORTHANDS:
            continue
        section, _, name = key.partition(".")
        if name:
            values.setdefault(section, {})[name] = dumped[section][name]
        else:
            values[section] = dumped[section]
    return values
