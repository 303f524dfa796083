"""MLflow: every run opplan makes and reads.

- :mod:`~opplan.names`: every tag, metric, artifact and experiment name (no MLflow
  import: training code uses it without loading MLflow);
- :mod:`~opplan.tracking.retries`: which errors are waited out, and for how long;
- :mod:`~opplan.tracking.client`: :class:`Store` (reading) and :class:`Tracker` (writing);
- :mod:`~opplan.tracking.lifecycle`: which run a piece of work uses (reuse, resume, kill, create);
- :mod:`~opplan.tracking.store`: creating the local store once, under one lock.

``from opplan import tracking as t`` gives the names at once and the rest on first use
(``t.Tracker``), so that importing the names never imports MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

from opplan.names import *  # noqa: F403 - the names are this package's vocabulary

_LAZY = ("client", "retries", "lifecycle", "store")
_MISSING = object()


def __getattr__(name: str) -> Any:
    """``t.Tracker`` and the like, from the submodule that defines it, imported on first use."""
    for module in _LAZY:
        found = getattr(importlib.import_module(f"opplan.tracking.{module}"), name, _MISSING)
        if found is not _MISSING:
            return found
    raise AttributeError(f"module 'opplan.tracking' has no attribute {name!r}")
