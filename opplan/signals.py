"""Ctrl-C (SIGINT) and SIGTERM end every command and stage in one line, never a traceback.

SIGTERM is turned into an exception like Ctrl-C's, so that the code in ``finally`` blocks runs
as for any other stop. What survives is what survives a kill (docs/design.md §11): written
shards, finished transitions and each run's last saved epoch; running the same command again
resumes from them. Exit status 128 + the signal's number, as a shell reports it (130, 143).
"""

from __future__ import annotations

import os
import signal
from types import FrameType

KEPT = {
    "data": "the videos and shards written so far are kept",
    "prepare": "the shards written so far are kept",
    "plan": "finished transitions and each running transition's last saved epoch are kept in the MLflow store",
    "final": "the final run's last saved epoch is kept",
    "baselines": "finished baselines and each running one's last saved epoch are kept",
}
"""What an interrupted command keeps, by command or stage name (others: finished work)."""


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, like ``KeyboardInterrupt`` for SIGINT."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def install() -> None:
    """Make SIGTERM raise :class:`Terminated` in this (main) thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def quiet_worker() -> None:
    """In a worker process: end at once and silently on SIGINT / SIGTERM (its parent reports)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: os._exit(128 + s))


def stopped(exc: BaseException, command: str, again: str) -> tuple[str, int] | None:
    """The one line and exit status for an interrupt, or ``None`` when ``exc`` is not one."""
    if isinstance(exc, KeyboardInterrupt):
        name, status = "interrupted (SIGINT)", 128 + signal.SIGINT
    elif isinstance(exc, Terminated):
        name, status = "terminated (SIGTERM)", 128 + signal.SIGTERM
    else:
        return None
    kept = KEPT.get(command, "finished work is kept")
    return f"opplan: {command} {name}: {kept}; run `{again}` again to resume", status
