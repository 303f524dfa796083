"""Progress of long work in the log: within an epoch (clips done, clips/s, ETA) and over a
planning (transitions done of the graph's total, elapsed time, time left at the rate so far).

Plain log lines, rate-limited, so that they read well under ``dvc repro`` and in a log
file: an epoch of Kinetics-400 takes about an hour on one GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class PassProgress:
    """One pass over a loader: ``update(clips)`` after each batch logs, at most every
    ``every`` seconds (None: never; 0: every batch), the clips done of ``total``, the rate
    and the time left."""

    def __init__(self, what: str, total: int | None, every: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.every, self.clock = what, total, every, clock
        self.start = self.last = clock()
        self.done = 0

    def update(self, clips: int) -> None:
        self.done += clips
        if self.every is None:
            return
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            eta = duration(left) if left == left else "?"
            return (f"{self.what}{self.done}/{self.total} clips ({100 * self.done / self.total:.0f} %), "
                    f"{rate:.1f} clips/s, ETA {eta}")
        return f"{self.what}{self.done} clips, {rate:.1f} clips/s, {duration(elapsed)} elapsed"


class PlanProgress:
    """Transitions done of a planning's ``total`` (the graph's edges; pruning can skip some),
    with the elapsed time and the time left at the mean rate so far, one line each. Reused
    transitions finish at once and make the first estimates short."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.clock = total, clock
        self.start = clock()
        self.done = 0

    def finished(self, what: str = "") -> None:
        self.done += 1
        name = f" ({what})" if what else ""
        elapsed = self.clock() - self.start
        left = ""
        if 0 < self.done < self.total and elapsed >= 1:
            left = f", about {duration(elapsed / self.done * (self.total - self.done))} left at this rate"
        log.info("planning: transition %d of %d done%s, %s elapsed%s", self.done, self.total, name,
                 duration(elapsed), left)

    def wrap(self, run: F) -> F:
        """``run(src, dst, ...)`` (the DP's ``run_transition``, or a ``submit`` returning a
        ``Future``) that reports each transition as it finishes."""

        def counted(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            result = run(src, dst, *args, **kwargs)
            what = f"{getattr(src, 'name', src)} → {getattr(dst, 'name', dst)}"
            if isinstance(result, Future):
                result.add_done_callback(lambda _: self.finished(what))
            else:
                self.finished(what)
            return result

        return counted  # type: ignore[return-value]
