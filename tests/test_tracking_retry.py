"""Retrying MLflow calls (``opplan.tracking.retries``) against a fake client and a fake
clock: transient errors are waited out with backoff and a WARNING each, other errors
are raised at once, and an exhausted budget becomes an OpplanError naming the server."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes
from mlflow.store.entities.paged_list import PagedList

from opplan import tracking as t
from opplan.errors import OpplanError
from opplan.tracking import client as tracking_client
from opplan.tracking import retries

URI = "http://tracking.example:5000"
REFUSED = MlflowException(
    "API request to http://tracking.example:5000/api/2.0/mlflow/runs/get failed with exception "
    "HTTPConnectionPool(host='tracking.example', port=5000): Max retries exceeded with url: /api/2.0/mlflow/runs/get "
    "(Caused by NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))")


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} error", response=response)


class FakeTime:
    """Stands in for the ``time`` module in opplan.tracking: sleeping only moves the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeClient:
    """Answers like ``MlflowClient``; ``fail[operation]`` lists errors to raise, one per call,
    before it answers. A failing ``create_run`` has made the run (the answer was lost)."""

    def __init__(self, **fail: list[Exception]) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.runs: dict[str, Any] = {}
        self.logged: list[Metric] = []

    def _answer(self, operation: str) -> None:
        self.calls.append(operation)
        if self.fail.get(operation):
            raise self.fail[operation].pop(0)

    def get_experiment_by_name(self, name: str) -> Any:
        self._answer("get_experiment_by_name")
        return SimpleNamespace(experiment_id="7", lifecycle_stage="active",
                               tags={t.EXPERIMENT_KIND_TAG: t.EXPERIMENT_KIND})

    def search_experiments(self, max_results: int, page_token: str | None) -> PagedList:
        self._answer("search_experiments")
        return PagedList([SimpleNamespace(name="exp", experiment_id="7")], None)

    def create_run(self, experiment_id: str, tags: dict[str, str], run_name: str) -> Any:
        run = SimpleNamespace(info=SimpleNamespace(run_id=f"run{len(self.runs)}"), data=SimpleNamespace(tags=tags))
        self.runs[run.info.run_id] = run
        self._answer("create_run")
        return run

    def search_runs(self, experiment_ids: list[str], filter_string: str, **kwargs: Any) -> list[Any]:
        self._answer("search_runs")
        return [r for r in self.runs.values() if f"'{r.data.tags[t.TAG_CREATE_TOKEN]}'" in filter_string]

    def get_run(self, run_id: str) -> Any:
        self._answer("get_run")
        return self.runs[run_id]

    def log_batch(self, run_id: str, metrics: list[Metric] = (), **kwargs: Any) -> None:
        self._answer("log_batch")
        self.logged += metrics


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tracking URI from outside; the MLflow variables a Tracker sets are undone after."""
    monkeypatch.delenv(t.ENV_URI, raising=False)
    saved = {name: os.environ.get(name) for name in t.MLFLOW_ENV_DEFAULTS}
    for name in saved:
        os.environ.pop(name, None)
    yield
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(retries, "time", fake)
    monkeypatch.setattr(tracking_client, "time", fake)
    return fake


def tracker_on(client: FakeClient, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> t.Tracker:
    monkeypatch.setattr(tracking_client, "MlflowClient", lambda tracking_uri: client)
    return t.Tracker(URI, "exp", **kwargs)


def test_transient_errors_are_waited_out_with_backoff_and_one_warning_each(
        clock: FakeTime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    errors = [REFUSED, requests.ConnectionError("connection dropped"),
              MlflowException("(sqlite3.OperationalError) database is locked", codes.TEMPORARILY_UNAVAILABLE),
              http_error(503)]
    client = FakeClient(get_experiment_by_name=list(errors))
    with caplog.at_level(logging.WARNING, logger="opplan.tracking"):
        tracker = tracker_on(client, monkeypatch)
    assert tracker.experiment_id == "7"
    assert client.calls == ["get_experiment_by_name"] * 5
    assert clock.sleeps == [1, 2, 4, 8]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    for attempt, (line, wait, error) in enumerate(zip(lines, clock.sleeps, errors), start=1):
        assert line.startswith(f"MLflow at {URI}: get_experiment_by_name failed (attempt {attempt}), "
                               f"retrying in {wait:g} s: {type(error).__name__}: ")
    assert "Connection refused" in lines[0] and "database is locked" in lines[2]


def test_mlflows_own_http_retries_are_kept_short_unless_the_user_set_them(
        clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    tracker_on(FakeClient(), monkeypatch)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


def test_a_run_made_by_a_create_whose_answer_was_lost_is_found_not_made_twice(
        clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(create_run=[REFUSED, REFUSED])
    tracker = tracker_on(client, monkeypatch)
    run_id = tracker.create_run("S0 → cs/4/0.02", {t.TAG_KIND: t.KIND_TRANSITION}, parent_id="parent")
    assert list(client.runs) == ["run0"] and run_id == "run0"
    assert client.calls[1:] == ["create_run", "search_runs"]
    assert client.runs["run0"].data.tags[t.TAG_KIND] == t.KIND_TRANSITION
    assert clock.sleeps == [1]


def test_a_retried_metric_batch_is_sent_again_unchanged(clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(log_batch=[http_error(502)])
    tracker = tracker_on(client, monkeypatch)
    clock.now = 5.0  # the timestamp must not move between the attempts: MLflow drops the exact duplicate
    tracker.log_metrics("run0", {t.M_VAL_ACC: 0.5}, step=3)
    assert client.calls.count("log_batch") == 2
    assert [(m.key, m.value, m.step, m.timestamp) for m in client.logged] == [(t.M_VAL_ACC, 0.5, 3, 1_700_000_005_000)]


@pytest.mark.parametrize("error", [
    MlflowException("Run 'abc' not found", codes.RESOURCE_DOES_NOT_EXIST),
    MlflowException("Invalid value for parameter", codes.INVALID_PARAMETER_VALUE),
    MlflowException("Experiment 'exp' already exists", codes.RESOURCE_ALREADY_EXISTS),
    MlflowException("Malformed filter", codes.BAD_REQUEST),
    http_error(404),
    ValueError("a bug"),
], ids=["does-not-exist", "invalid-value", "already-exists", "bad-request", "http-404", "value-error"])
def test_other_errors_are_raised_at_once(error: Exception, clock: FakeTime, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient(get_run=[error])
    tracker = tracker_on(client, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="opplan.tracking"), pytest.raises(type(error)) as raised:
        tracker.get_run("abc")
    assert raised.value is error
    assert client.calls.count("get_run") == 1 and clock.sleeps == [] and not caplog.records


@pytest.mark.parametrize("error", [
    MlflowException("boom"),  # INTERNAL_ERROR: MlflowException's default, and a server's 500
    MlflowException("try later", codes.TEMPORARILY_UNAVAILABLE),
    MlflowException("slow down", codes.REQUEST_LIMIT_EXCEEDED),
    MlflowException("database is locked", codes.BAD_REQUEST),
    REFUSED,
    requests.Timeout("read timed out"),
    ConnectionResetError(104, "Connection reset by peer"),
    http_error(429),
    sqlite3.OperationalError("database is locked"),
])
def test_transient_errors(error: Exception) -> None:
    assert t.is_transient(error)


def test_an_exhausted_budget_is_an_opplan_error_naming_server_operation_and_error(
        clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(log_batch=[REFUSED] * 100)
    tracker = tracker_on(client, monkeypatch, retry_seconds=100)
    with pytest.raises(OpplanError) as raised:
        tracker.set_tags("run0", {t.TAG_STATUS: t.STATUS_FINISHED})
    assert clock.sleeps == [1, 2, 4, 8, 16, 30, 30]  # capped at 30 s; one more wait would pass 100 s
    assert client.calls.count("log_batch") == 8
    message = str(raised.value)
    assert URI in message and "log_batch" in message and "Connection refused" in message


def test_reading_a_store_retries_too_and_gives_up_with_an_opplan_error(
        clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(search_experiments=[REFUSED])
    monkeypatch.setattr(tracking_client, "MlflowClient", lambda tracking_uri: client)
    readers = t.open_store(URI)
    assert list(readers) == ["exp"] and readers["exp"].experiment_id == "7" and clock.sleeps == [1]

    client.fail["search_experiments"] = [REFUSED] * 10
    with pytest.raises(OpplanError, match=f"MLflow at {URI}: search_experiments still failing after 5 s"):
        t.open_store(URI, retry_seconds=5)
