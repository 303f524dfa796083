"""Logging set-up shared by the command line, the stage scripts and planning workers."""

from __future__ import annotations

import logging
import sys

NOISY = ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "git")


def configure_logging(verbose: bool = False) -> None:
    """opplan's messages on stderr with a timestamp; libraries' chatter only from warnings up."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow logs every SQLite error with its traceback before raising it; opplan reports the
    # error it raises, in one line (opplan.tracking.retries).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
