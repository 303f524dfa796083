"""Shared by the stage scripts: argv -> params -> one opplan call, errors without tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opplan import signals
from opplan.config import Params
from opplan.errors import OpplanError, user_message
from opplan.logs import configure_logging
from opplan.params_file import load_params


def run_stage(work: Callable[[Params], Any], *, trains: bool = False) -> None:
    """``python pipeline/<stage>.py [PARAMS]``: validate params first, then do the work.

    A stage that ``trains`` runs data-parallel under ``torchrun`` (see
    :mod:`opplan.distributed`), relaunching itself there when ``distributed.nproc_per_node``
    asks for several processes. A stage whose params file changed while it ran fails (see
    :func:`require_unchanged`), so that DVC never records values the stage did not use.
    """
    configure_logging()
    signals.install()
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    try:
        params = load_params(path)
        if params.train.cpu_isa != "native":  # before any kernel of this process (docs/determinism.md)
            from opplan.device import pin_cpu

            pin_cpu(params.train.cpu_isa, None)
        if trains:
            from opplan import distributed

            distributed.launch(params, sys.argv, lambda: work(params))
        else:
            work(params)
        require_unchanged(path, params)
    except (KeyboardInterrupt, signals.Terminated) as exc:
        stage = Path(sys.argv[0]).stem
        line, status = signals.stopped(exc, stage, f"dvc repro {stage}")
        print(line, file=sys.stderr)
        sys.exit(status)
    except Exception as exc:  # noqa: BLE001 - only user errors are turned into a message
        message = user_message(exc)
        if message is None:
            raise
        print(f"opplan: error: {message}", file=sys.stderr)
        sys.exit(2)


def require_unchanged(path: Path, used: Params) -> None:
    """Refuse to end a stage whose params file now says something else than what it used: DVC
    reads the params for ``dvc.lock`` after the stage, and would pair these outputs with them."""
    now = load_params(path)
    changed = first_difference(used.model_dump(mode="json"), now.model_dump(mode="json"))
    if changed is not None:
        key, before, after = changed
        raise OpplanError(f"{path}: {key} changed while this stage ran ({before!r} when it started, {after!r} "
                          f"now); its outputs are of the old value, so DVC must not record the new one. Run the "
                          f"stage again (`dvc repro`): finished work is reused")


def first_difference(a: Any, b: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first ``(dotted key, a's value, b's value)`` where two plain-data trees differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for name in dict.fromkeys([*a, *b]):
            found = first_difference(a.get(name), b.get(name), f"{key}.{name}" if key else str(name))
            if found is not None:
                return found
        return None
    return None if a == b else (key, a, b)
