"""What several stages share: inputs checked up front, the planning configuration that
identifies their runs, and the project lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from opplan.config import Params
from opplan.data.shards import shards_fingerprint, verify_shards
from opplan.dependencies import result_values
from opplan.documents import FinalRecord, PlanDocument
from opplan.errors import OpplanError
from opplan.planning.graph import State, parse_state

LOCK_DIR = Path(".opplan")
WORK_ROOT = LOCK_DIR / "work"
"""Resumable epoch states of unfinished runs (removed when a run ends)."""
FINAL_RECORD = "run.json"
"""What ``final`` writes beside its ``model.pt`` (run id, config hash, schedule); ``evaluate`` reads it."""
FULL_TRAIN = ("train", "val")
"""The full training set (internal train + internal validation) of final and baselines (docs/design.md §5)."""


def require_shards(params: Params) -> Path:
    """The prepared shards folder, or a clear error saying how to make it."""
    shards = Path(params.prepare.out)
    if not (shards / "videos.csv").is_file():
        raise OpplanError(
            f"{shards}/videos.csv not found: the dataset has not been prepared. "
            f"Run `dvc repro prepare` (or `python pipeline/prepare.py`) first."
        )
    verify_shards(shards)  # size + sampled content of every shard, before any training
    return shards


def planning_config(params: Params, shards: Path) -> dict[str, Any]:
    """Everything a transition's result depends on: the keys the ``plan`` stage depends on in
    ``dvc.yaml`` (:func:`opplan.dependencies.result_keys`) and the shards. Its hash identifies a
    planning; ``final`` and ``evaluate`` check their inputs against it.

    ``plan.prune``, ``plan.prune_z`` and ``plan.prune_min_epochs`` are left out while pruning is
    off (the DP is then the one planned before they existed).
    """
    config = stage_config(params, "plan", shards)
    if not config["plan"].get("prune"):  # off, pruning changes nothing: plans made before it existed stay valid
        for key in ("prune", "prune_z", "prune_min_epochs"):
            config["plan"].pop(key, None)
    return config


def stage_config(params: Params, stage: str, shards: Path) -> dict[str, Any]:
    """The values of every key ``stage`` depends on (``dvc.yaml``'s params, less where it runs
    and logs) and the shards it reads: what identifies its runs (the grid's: ``baselines``)."""
    manifest = hashlib.sha256((shards / "videos.csv").read_bytes()).hexdigest()
    return {**result_values(params, stage), "manifest_hash": manifest, "shards_hash": shards_fingerprint(shards)}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def require_current(document: PlanDocument | FinalRecord, path: Path, params: Params, shards: Path) -> None:
    """Refuse ``plan.json`` or ``final/run.json`` made under other planning params than the
    current ones (edited since, or while, the stage that wrote it ran)."""
    current = config_hash(planning_config(params, shards))
    if document.config_hash != current:
        raise OpplanError(
            f"{path} was made under planning configuration {document.config_hash}, but the current params "
            f"and data give {current}: they changed since. Run `dvc repro` (or `opplan plan`, then this stage) "
            f"to plan again, or restore the params it was made with")


def final_state(document: PlanDocument | FinalRecord, params: Params) -> State:
    """The final state named by ``plan.json`` or ``final/run.json``."""
    return parse_state(document.final_state, params.plan.clip_lengths, params.plan.lrs)


def require_file(path: Path, made_by: str) -> Path:
    if not path.is_file():
        raise OpplanError(f"{path} not found; it is made by the `{made_by}` stage (`dvc repro {made_by}`)")
    return path


@contextlib.contextmanager
def project_lock(name: str) -> Iterator[None]:
    """One ``plan``/``final``/``baselines`` at a time per project: a second one refuses."""
    LOCK_DIR.mkdir(exist_ok=True)
    path = LOCK_DIR / f"{name}.lock"
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OpplanError(
            f"another `opplan {name}` is running in {Path.cwd()} (lock {path} is held); "
            f"wait for it to finish, or stop it first"
        ) from None
    try:
        yield
    finally:
        lock.release()  # the file stays: unlinking a lock file races with a waiting process
