"""Cost on one footing: core-seconds (docs/study.md, "Cost").

The CPU time (user + system) of this process and of its children that have ended, so that
work done in spawned worker processes (planning's workers, the grid's) counts once they are
joined. On a GPU this is not device time; the study then also reports wall seconds.
"""

from __future__ import annotations

import resource


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
