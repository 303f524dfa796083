"""Retrying a tracking server or database that blinks, and what MLflow's own client does.

Only errors that can go away by themselves are retried (:func:`is_transient`); a store
that can never work (read-only, missing, corrupt) fails at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TypeVar

import requests
from mlflow.exceptions import MlflowException

from opplan.errors import OpplanError

log = logging.getLogger(__name__)

DEFAULT_RETRY_SECONDS = 600.0
"""How long one MLflow call is retried on transient errors before opplan gives up."""
MAX_WAIT_SECONDS = 30.0

MLFLOW_ENV_DEFAULTS = {
    # MLflow's HTTP client retries every request itself, without a word in opplan's log: 7 times
    # with backoff factor 2, about four minutes (MLFLOW_HTTP_REQUEST_* in
    # mlflow/environment_variables.py; urllib3's Retry in mlflow/utils/request_utils.py).
    # None here: an outage is waited out by `retrying`, which says so, one line per retry.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # only matters if the user sets retries
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",  # per request (default 120): a hung server is retried sooner
    # keep stage logs readable: no progress bars, no "View run at http://..." lines on stdout
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
TRANSIENT_TEXT = ("database is locked", "max retries exceeded", "failed with timeout exception",
                  "connection refused", "connection reset", "connection aborted", "remotedisconnected")
TRANSIENT_HTTP = frozenset({408, 429})  # and every 5xx
PERMANENT_TEXT = re.compile(r"readonly database|read-only file system|unable to open database file|"
                            r"file is not a database|database disk image is malformed|no such (table|column)|"
                            r"duplicate column name|(table|index) \S+ already exists")
"""A store that no wait can mend (SQLite's own words; also inside a server's 500 answer): MLflow
reports them as ``TEMPORARILY_UNAVAILABLE``/``INTERNAL_ERROR``, yet retrying only delays the error."""

T = TypeVar("T")


def set_mlflow_env_defaults() -> None:
    """Apply :data:`MLFLOW_ENV_DEFAULTS` where the user has not set the variable."""
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_permanent_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the store itself is unusable (read-only, damaged, half-made)."""
    return PERMANENT_TEXT.search(str(exc).lower()) is not None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself: the server or database is down, busy or slow.

    Everything else (a missing run, an invalid value, an existing name, a read-only or damaged
    store...) is raised at once. ``INTERNAL_ERROR`` is also what a bare ``MlflowException``
    carries, so some bugs are retried too; they end as an :class:`OpplanError` with the error
    after ``retry_seconds``.
    """
    if is_permanent_store_error(exc):
        return False
    if isinstance(exc, ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code in TRANSIENT_HTTP
    if any(text in str(exc).lower() for text in TRANSIENT_TEXT):
        return True
    return isinstance(exc, MlflowException) and exc.error_code in TRANSIENT_CODES


def retrying(call: Callable[[], T], *, uri: str, operation: str, budget: float) -> T:
    """``call()``, retried on transient errors (:func:`is_transient`) with exponential backoff
    (1, 2, 4, ... s, at most :data:`MAX_WAIT_SECONDS`), one WARNING per retry.

    Raises :class:`OpplanError` naming ``uri``, ``operation`` and the last error when waiting
    again would go past ``budget`` seconds (a call that hangs may overrun it by its timeout).
    """
    deadline = time.monotonic() + budget
    wait = 1.0
    for attempt in itertools.count(1):
        try:
            return call()
        except Exception as exc:
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]  # one line in the log
            if is_permanent_store_error(exc):
                raise OpplanError(f"MLflow at {uri}: {operation} failed, and waiting will not help: {error}. "
                                  f"Make the store writable (or repair it: see the error), then run again; "
                                  f"finished work is kept") from None
            if not is_transient(exc):
                raise
            if time.monotonic() + wait > deadline:
                raise OpplanError(f"MLflow at {uri}: {operation} still failing after {budget:g} s ({attempt} "
                                  f"attempts; is the tracking server up? tracking.retry_seconds sets how long "
                                  f"opplan waits); last error: {error}") from exc
            log.warning("MLflow at %s: %s failed (attempt %d), retrying in %g s: %s",
                        uri, operation, attempt, wait, error)
        time.sleep(wait)
        wait = min(2 * wait, MAX_WAIT_SECONDS)
    raise AssertionError("unreachable")
