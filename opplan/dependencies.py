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

from opplan.config import Params

RUNTIME: dict[str, tuple[str, ...]] = {
    "prepare": ("workers",),
    "train": ("num_workers", "prefetch_factor", "progress_seconds", "val_cache_mb"),
    "plan": ("workers",),
    "tracking": ("retry_seconds",),
    "distributed": ("nproc_per_node", "backend", "timeout_minutes"),
}
"""Settings that change only speed. ``distributed``: with N processes BatchNorm sees batch/N
clips per device, as ``train.micro_batch_per_length`` does in one process (README, "Scaling out")."""

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
    "final": (*_PLANNING, "evaluate", "final"),
    "evaluate": (*_PLANNING, "evaluate"),
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
    model = Params.model_fields[section].annotation
    return list(getattr(model, "model_fields", {}))


def all_keys() -> list[str]:
    """Every setting of a params file: ``seed``, ``device`` and ``section.key``."""
    keys: list[str] = []
    for name in Params.model_fields:
        fields = _fields(name)
        keys += [f"{name}.{key}" for key in fields] if fields else [name]
    return keys


def runtime_keys() -> set[str]:
    return {f"{section}.{key}" for section, keys in RUNTIME.items() for key in keys}


def _expand(entry: str) -> list[str]:
    """A section name -> its keys that are not ``RUNTIME``; a key or top-level setting -> itself."""
    if "." in entry or not _fields(entry):
        return [entry]
    return [f"{entry}.{key}" for key in _fields(entry) if key not in RUNTIME.get(entry, ())]


def result_keys(stage: str) -> list[str]:
    """The keys a stage's results depend on (not ``WHERE``, not ``RUNTIME``)."""
    return [key for entry in STAGE_READS[stage] for key in _expand(entry)]


def stage_params(stage: str) -> list[str]:
    """``dvc.yaml``'s ``params`` for a stage: whole sections where none of their keys is
    ``RUNTIME``, the section's other keys one by one where some are."""
    where = STAGE_WHERE.get(stage, WHERE)
    listed: list[str] = []
    for entry in STAGE_READS[stage]:
        listed += [entry] if "." not in entry and entry not in RUNTIME else _expand(entry)
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
