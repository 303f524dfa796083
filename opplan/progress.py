"""Progress of long work in the log, one reporter for all of it: items done of a total at a
rate with the time left (:class:`Progress`: videos decoded by ``prepare``, clips of a training
or validation pass) and transitions done over a planning (:class:`PlanProgress`).

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


class Progress:
    """``update(n)`` after each chunk of work logs, at most every ``every`` seconds (None:
    never; 0: every update), the ``unit`` done of ``total``, the rate and the time left; with
    ``at_end`` also when the last one is done. ``done`` items were done before (a resumed run):
    they count towards the total, not the rate."""

    def __init__(self, what: str, total: int | None, every: float | None, *, unit: str = "clips",
                 done: int = 0, at_end: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.every, self.unit, self.at_end, self.clock = what, total, every, unit, at_end, clock
        self.start = self.last = clock()
        self.done = self.resumed = done

    def update(self, n: int) -> None:
        self.done += n
        if self.every is None:
            return
        now = self.clock()
        if now - self.last < self.every and not (self.at_end and self.done == self.total):
            return
        self.last = now
        log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.start
        rate = (self.done - self.resumed) / elapsed if elapsed > 0 else float("nan")
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            eta = duration(left) if left == left else "?"
            return (f"{self.what}{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %), "
                    f"{rate:.1f} {self.unit}/s, ETA {eta}")
        return f"{self.what}{self.done} {self.unit}, {rate:.1f} {self.unit}/s, {duration(elapsed)} elapsed"


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
