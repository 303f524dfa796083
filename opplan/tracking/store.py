"""Creating a local MLflow store (SQLite) once, whole, under one lock shared by every stage.

MLflow creates a SQLite store on first use by running its schema migrations in place.
Two stages starting together on a fresh project both migrate (``duplicate column name``),
and a kill during the migrations leaves a half-made database that no rerun can open
(``index ... already exists``). So the store is made here before any client touches it:
under ``<store>.lock`` (one lock for all stages), migrated in a file beside it, and
renamed into place only when complete. A reader therefore finds no store or a whole one.
A half-made store left by an older opplan (schema short of MLflow's latest, no run in it)
is moved aside and made again; one that holds runs is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from opplan.errors import OpplanError

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute, see ``resolve_uri``), else ``None``:
    the one parser of SQLite store URIs (``opplan.tracking.client`` uses it too)."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def store_lock(db: Path) -> FileLock:
    """The lock every stage takes to create (or repair) the store at ``db``."""
    return FileLock(str(db.with_name(db.name + ".lock")))


def ensure_store(uri: str) -> None:
    """Make the SQLite store at ``uri`` if it does not exist yet; other stores as they are."""
    db = sqlite_path(uri)
    if db is not None and db.exists() and not half_made(db):
        check_readable(uri)  # a foreign database is refused, not migrated into
    if db is None or (db.exists() and not half_made(db)):
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with store_lock(db):
            if db.exists() and half_made(db):
                aside = db.with_name(f"{db.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
                log.warning("the MLflow store %s was left half-made (a kill while it was created) and holds no "
                            "run: moving it to %s and creating it again", db, aside)
                os.replace(db, aside)
            if not db.exists():  # another stage may have made it while this one waited
                _create(db)
    except OSError as exc:
        raise OpplanError(f"cannot create the MLflow store {db}: {exc.strerror or exc}; check that "
                          f"{db.parent} is writable and has free space") from None


_MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}
"""Tables every MLflow SQLite store has; a file without them is not one (docs/design.md §11)."""


def check_readable(uri: str) -> None:
    """Refuse, without touching it, a local SQLite file at ``uri`` that is not an MLflow store.

    Read-only commands call this before any MLflow client: MLflow's SQLAlchemy store migrates
    whatever database it is given (a 0-byte file, or one with other tables, gains MLflow's
    schema), and a file that is not SQLite gives a long SQLAlchemy traceback. A missing file is
    left to the caller (it says what to run). Other stores (servers, folders) pass as they are.
    The one write: a database left mid-transaction by a killed writer is rolled back first, by
    SQLite itself (``_connect``), as any client's next connection would.
    """
    db = sqlite_path(uri)
    if db is None or not db.exists():
        return
    if db.is_dir():
        raise OpplanError(f"{db} is a folder, not an MLflow SQLite store; pass the database file (--tracking-uri / "
                          f"tracking.uri)")
    try:
        with _connect(db) as con:
            tables = _tables(con)
    except sqlite3.DatabaseError:
        tables = None
    except OSError as exc:
        raise OpplanError(f"cannot read the MLflow store {db}: {exc.strerror or exc}") from None
    if tables is None or not _MLFLOW_TABLES <= tables:
        what = ("an empty file" if db.stat().st_size == 0 else "not an SQLite database" if tables is None
                else f"an SQLite database without MLflow's tables (has: {', '.join(sorted(tables)[:5]) or 'none'})")
        raise OpplanError(f"{db} is not an MLflow store ({what}); it was left untouched. Pass the project's store "
                          f"(--tracking-uri / tracking.uri, e.g. sqlite:///mlflow.db)")


_RECOVER = {"SQLITE_READONLY_ROLLBACK", "SQLITE_READONLY_RECOVERY"}
"""SQLite's answers to a read-only connection on a database whose last writer was killed
mid-transaction (a hot journal, or a WAL to recover): any read-write connection repairs it."""


@contextlib.contextmanager
def _connect(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to ``db``; where a writer was killed mid-transaction, SQLite's own
    recovery first (a read-write connection rolls the hot journal back, as MLflow's next
    connection would), never creating a file. A SIGKILL during planning leaves such a store."""
    uri = db.resolve().as_uri()
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        _tables(con)  # the first read meets a hot journal, if any
    except sqlite3.DatabaseError as exc:
        con.close()
        if getattr(exc, "sqlite_errorname", None) not in _RECOVER:
            raise
        log.info("the MLflow store %s was left mid-transaction by a killed writer: SQLite rolls it back", db)
        con = sqlite3.connect(f"{uri}?mode=rw", uri=True)
    with contextlib.closing(con):
        yield con


def _tables(con: sqlite3.Connection) -> set[str]:
    return {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}


def half_made(db: Path) -> bool:
    """Whether ``db`` is a store whose creation was cut short: its schema is not MLflow's
    latest and it holds no run (a store of an older MLflow with runs is the user's to upgrade)."""
    from mlflow.store.db.utils import _get_latest_schema_revision  # the head of MLflow's migrations

    try:
        with _connect(db) as con:
            tables = _tables(con)
            version = con.execute("select version_num from alembic_version").fetchone() \
                if "alembic_version" in tables else None
            runs = con.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError:  # not a database at all: MLflow's own error says so
        return False
    if tables and not tables & {"alembic_version", "experiments"}:  # another program's database: not ours to repair
        return False
    return runs == 0 and (version is None or version[0] != _get_latest_schema_revision())


def _create(db: Path) -> None:
    """Migrate a new database beside ``db``, then rename it into place (atomic)."""
    from mlflow import MlflowClient

    for stale in db.parent.glob(f".{db.name}.creating-*"):  # left by a kill during creation
        stale.unlink(missing_ok=True)
    aside = db.with_name(f".{db.name}.creating-{os.getpid()}")
    log.info("creating the MLflow store %s", db)
    try:
        MlflowClient(tracking_uri=SQLITE + str(aside)).search_experiments(max_results=1)  # migrates
        with open(aside, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(aside, db)
    finally:
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()
