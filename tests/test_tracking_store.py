"""The local MLflow store as damage finds it: two stages creating it at once, a kill during
its creation, a read-only database; and how opplan's experiments show in MLflow's UI."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes

from opplan import names as n
from opplan.cli import cli
from opplan.errors import OpplanError
from opplan.tracking import retries
from opplan.tracking.client import Tracker, open_store
from opplan.tracking.store import half_made


@pytest.fixture(autouse=True)
def no_outside_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(n.ENV_URI, raising=False)


def make_tracker(db: str, experiment: str, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    Tracker(f"sqlite:///{db}", experiment, artifact_root=Path(db).parent / "mlartifacts")


def test_stages_creating_a_fresh_store_at_once_all_succeed(tmp_path: Path) -> None:
    """plan and baselines started together on a fresh project (two experiments, one store)."""
    db = tmp_path / "mlflow.db"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    processes = [context.Process(target=make_tracker, args=(str(db), name, start))
                 for name in ("demo", "demo-baselines", "demo")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(300)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert sorted(open_store(f"sqlite:///{db}")) == ["Default", "demo", "demo-baselines"]
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))


def test_a_store_whose_creation_was_killed_is_made_again_and_nothing_with_runs_is_touched(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    leftover = tmp_path / ".mlflow.db.creating-4242"  # killed while this opplan built it aside
    leftover.write_bytes(b"SQLite format 3\x00 half")
    with sqlite3.connect(db) as con:  # killed while an older opplan let MLflow build it in place
        con.execute("create table experiments (experiment_id integer primary key, name text)")
        con.execute("create table runs (run_uuid text primary key)")
    assert half_made(db)

    tracker = Tracker(f"sqlite:///{db}", "demo", artifact_root=tmp_path / "mlartifacts")
    run_id = tracker.create_run("r", {n.TAG_KIND: n.KIND_FINAL})
    assert not leftover.exists()
    (aside,) = tmp_path.glob("mlflow.db.half-made-*")  # moved aside, not deleted
    assert not half_made(db)
    assert Tracker(f"sqlite:///{db}", "demo", artifact_root=tmp_path / "mlartifacts").get_run(run_id)
    assert aside.stat().st_size > 0


@pytest.mark.parametrize("message", [
    "(sqlite3.OperationalError) attempt to write a readonly database",
    "(sqlite3.OperationalError) index ix_runs_name already exists",
    "(sqlite3.OperationalError) duplicate column name: step",
])
def test_a_store_that_cannot_work_fails_at_once_in_one_line(
        message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow reports these as TEMPORARILY_UNAVAILABLE; waiting (600 s by default) would not help."""
    calls = []

    def broken() -> None:
        calls.append(1)
        raise MlflowException(message, codes.TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(retries.time, "sleep", lambda s: pytest.fail("slept on a permanent error"))
    with pytest.raises(OpplanError) as raised:
        retries.retrying(broken, uri="sqlite:///x/mlflow.db", operation="log_batch", budget=600)
    assert calls == [1] and "\n" not in str(raised.value)
    assert "sqlite:///x/mlflow.db" in str(raised.value) and "waiting will not help" in str(raised.value)
    assert retries.is_transient(MlflowException("(sqlite3.OperationalError) database is locked",
                                                codes.TEMPORARILY_UNAVAILABLE))


def test_experiments_open_on_the_runs_table_and_ui_prints_its_link(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", "demo")
    assert tracker.client.get_experiment(tracker.experiment_id).tags[n.EXPERIMENT_KIND_TAG] == n.EXPERIMENT_KIND
    older = tracker.client.create_experiment("demo-baselines")  # made before opplan marked them
    Tracker(f"sqlite:///{db}", "demo-baselines")
    assert tracker.client.get_experiment(older).tags[n.EXPERIMENT_KIND_TAG] == n.EXPERIMENT_KIND

    (tmp_path / "params.yaml").write_text(f"tracking:\n  uri: sqlite:///{db}\n  experiment: demo\n")
    started, stopped = [], []

    class Server:  # stands for MLflow's server: answers at once, stops when asked
        pid, returncode = -1, 0

        def wait(self) -> int:
            return 0

    from opplan.tracking import ui

    monkeypatch.setattr(ui, "start", lambda uri, host, port: started.append((uri, host, port)) or Server())
    monkeypatch.setattr(ui, "wait_until_up", lambda process, url, timeout: None)
    monkeypatch.setattr(ui, "stop", lambda process: stopped.append(process))
    result = CliRunner().invoke(cli, ["ui", "--params", "params.yaml", "--port", "5123"])
    assert result.exit_code == 0, result.output
    view = "runs?workflowType=machine_learning"  # MLflow's training view, not its GenAI one
    assert f"http://127.0.0.1:5123/#/experiments/{tracker.experiment_id}/{view}" in result.output
    assert f"http://127.0.0.1:5123/#/experiments/{older}/{view}" in result.output
    assert started == [(f"sqlite:///{db}", "127.0.0.1", 5123)] and len(stopped) == 1


def foreign_files(tmp_path: Path) -> list[Path]:
    """A database of another program, a 0-byte file and a text file, each given as the store."""
    shop = tmp_path / "shop.db"
    with sqlite3.connect(shop) as con:
        con.execute("create table customers (id integer primary key, name text)")
        con.execute("insert into customers (name) values ('Ada')")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    return [shop, empty, text]


@pytest.mark.parametrize("command", [["report"], ["ui"], ["evaluate"]])
def test_read_only_commands_refuse_a_foreign_file_and_leave_it_byte_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: pytest.fail("mlflow server started on a foreign file"))
    for db in foreign_files(tmp_path):
        before = db.read_bytes()
        (tmp_path / "params.yaml").write_text(f"tracking:\n  uri: sqlite:///{db}\n")
        if command == ["evaluate"]:  # evaluate reads the store only to find the final run it logs to
            from opplan.params_file import load_params
            from opplan.stages.evaluate import final_run_tracker

            with pytest.raises(OpplanError, match="is not an MLflow store") as raised:
                final_run_tracker(load_params("params.yaml"), "0" * 32, tmp_path / "final" / "run.json")
            message = str(raised.value)
        else:
            result = CliRunner().invoke(cli, [*command, "--params", "params.yaml"])
            assert result.exit_code == 2, result.output
            message = result.output.strip()
            assert len(message.splitlines()) == 1 and "Traceback" not in message
        assert str(db) in message and "is not an MLflow store" in message
        assert db.read_bytes() == before
        assert not list(tmp_path.glob("*.db.*"))  # nothing made beside it either


def test_a_stage_refuses_a_foreign_database_instead_of_migrating_or_moving_it(tmp_path: Path) -> None:
    shop = foreign_files(tmp_path)[0]
    before = shop.read_bytes()
    with pytest.raises(OpplanError, match="customers"):
        Tracker(f"sqlite:///{shop}", "demo", artifact_root=tmp_path / "mlartifacts")
    assert shop.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.db", "notes.db", "shop.db"]


def test_report_with_tracking_uri_on_a_foreign_database_leaves_it_untouched(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shop = foreign_files(tmp_path)[0]
    before = shop.read_bytes()
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    result = CliRunner().invoke(cli, ["report", "--params", "params.yaml", "--tracking-uri", f"sqlite:///{shop}"])
    assert result.exit_code == 2 and "customers" in result.output, result.output
    assert shop.read_bytes() == before


def test_ui_refuses_a_port_out_of_range_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    result = CliRunner().invoke(cli, ["ui", "--params", "params.yaml", "--port", "99999"])
    assert result.exit_code == 2 and "99999" in result.output and "Traceback" not in result.output


def test_a_relative_store_resolves_against_the_dvc_repository_a_stage_runs_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dvc exp run --temp``/``--queue`` run stages in a copy of the workspace and set
    ``DVC_ROOT`` to the repository: its store, not the copy's."""
    from opplan.tracking.client import absolute_uri

    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{copy.resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{(tmp_path / 'repo').resolve()}/mlflow.db"
    assert absolute_uri("sqlite:////elsewhere/m.db") == "sqlite:////elsewhere/m.db"
    assert absolute_uri("http://server:5000") == "http://server:5000"


def test_an_experiment_first_made_in_a_temporary_copy_keeps_its_artifacts_in_the_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first stage to log into an experiment may run in ``dvc exp run --temp``'s copy
    (a fresh clone whose first run is queued): its artifacts belong beside the repository's
    store, not in the copy DVC deletes afterwards."""
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    tracker = Tracker("sqlite:///mlflow.db", "fresh")
    run_id = tracker.create_run("r", {n.TAG_KIND: n.KIND_FINAL})
    (copy / "plan.json").write_text("{}")
    tracker.log_artifact(run_id, copy / "plan.json")

    logged = repo.resolve() / "mlartifacts" / "fresh" / run_id / "artifacts" / "plan.json"
    assert logged.read_text() == "{}"
    assert (repo / "mlflow.db").is_file()
    assert sorted(p.name for p in copy.iterdir()) == ["plan.json"]


KILLED_MID_WRITE = """
import os, signal, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("pragma cache_size = 10")  # pages spill to the file before commit: a hot journal
con.execute("begin")
con.execute("create table filler (x blob)")
for _ in range(2000):
    con.execute("insert into filler values (?)", (os.urandom(2000),))
con.execute("update runs set name = 'garbled'")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_whose_writer_was_killed_mid_transaction_opens_with_its_runs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILL during planning can leave ``mlflow.db-journal`` beside the store: SQLite's read-only
    connection then answers SQLITE_READONLY_ROLLBACK, which was once taken for "not an SQLite
    database" and refused the resumed plan (CI, test_resume). SQLite rolls the journal back."""
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    run_id = Tracker(uri, "demo", artifact_root=tmp_path / "mlartifacts").create_run("r", {n.TAG_KIND: n.KIND_FINAL})
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(db)], check=False)
    assert killed.returncode == -9 and (tmp_path / "mlflow.db-journal").stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # the state the check met
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as con:
            con.execute("select count(*) from runs").fetchone()

    assert not half_made(db)
    result = CliRunner().invoke(cli, ["report", "--tracking-uri", uri])
    assert "is not an MLflow store" not in result.output, result.output
    run = Tracker(uri, "demo", artifact_root=tmp_path / "mlartifacts").get_run(run_id)
    assert run.info.run_name == "r"  # the killed transaction was rolled back, not kept
    with sqlite3.connect(db) as con:
        assert "filler" not in {row[0] for row in con.execute("select name from sqlite_master")}
