"""Shared by the stage scripts: argv -> params -> one opplan call, errors without tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from opplan.cli import configure_logging
from opplan.config import Params, load_params
from opplan.errors import user_message


def run_stage(work: Callable[[Params], Any], *, trains: bool = False) -> None:
    """``python pipeline/<stage>.py [PARAMS]``: validate params first, then do the work.

    A stage that ``trains`` runs data-parallel under ``torchrun`` (see
    :mod:`opplan.distributed`), relaunching itself there when ``distributed.nproc_per_node``
    asks for several processes.
    """
    configure_logging()
    try:
        params = load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
        if trains:
            from opplan import distributed

            distributed.launch(params, sys.argv, lambda: work(params))
        else:
            work(params)
    except Exception as exc:  # noqa: BLE001 - only user errors are turned into a message
        message = user_message(exc)
        if message is None:
            raise
        print(f"opplan: error: {message}", file=sys.stderr)
        sys.exit(2)
