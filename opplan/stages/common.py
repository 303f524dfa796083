"""What every stage needs: its inputs checked up front and the project lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from opplan.config import Params
from opplan.data.shards import verify_shards
from opplan.errors import OpplanError
from opplan.planning.graph import State, parse_state

LOCK_DIR = Path(".opplan")
WORK_ROOT = LOCK_DIR / "work"
"""Resumable epoch states of unfinished runs (removed when a run ends)."""
FULL_TRAIN = ("train", "val")
"""The full training set (internal train + internal validation) of final and baselines (SPEC §5)."""


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


def final_state(document: dict[str, Any], params: Params) -> State:
    """The final state named by ``plan.json`` or ``final/run.json``."""
    return parse_state(document["final_state"], params.plan.clip_lengths, params.plan.lrs)


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
