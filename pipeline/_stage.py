"""Shared by the stage scripts: argv -> params -> one opplan call, errors without tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from opplan.cli import configure_logging
from opplan.config import Params, load_params
from opplan.errors import OpplanError


def run_stage(work: Callable[[Params], Any]) -> None:
    """``python pipeline/<stage>.py [PARAMS]``: validate params first, then do the work."""
    configure_logging()
    try:
        work(load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml"))
    except OpplanError as exc:
        print(f"opplan: error: {exc}", file=sys.stderr)
        sys.exit(2)
