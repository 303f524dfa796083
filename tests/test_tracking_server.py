"""opplan against a real ``mlflow server`` (SQLite backend, artifacts served by the server):
``opplan plan`` and ``opplan report`` as subprocesses, checked through the server's REST
API with plain urllib; then the server is killed mid-plan and restarted, and the plan
must finish as if nothing had happened."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from tiny import tiny_config

from opplan import tracking as t
from opplan.config import Params
from opplan.planning.graph import graph_from_params

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1 over ``root/mlflow.db``, serving ``root/artifacts``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Launch the server; :meth:`wait` until it answers."""
        command = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, **ONE_THREAD, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # its own process group: killed as one

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL to the server's whole process group (uvicorn runs in a child process)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None

    # --- the REST API, without the mlflow client ---------------------------------

    def get(self, endpoint: str, **query: str) -> dict[str, Any]:
        url = f"{self.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{endpoint}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    def experiment_id(self, name: str) -> str:
        return self.get("experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"]

    def runs(self, experiment: str, kind: str) -> list[dict[str, Any]]:
        body = {"experiment_ids": [self.experiment_id(experiment)], "filter": f"tags.`{t.TAG_KIND}` = '{kind}'",
                "max_results": 1000}
        return self.post("runs/search", body).get("runs", [])

    def artifacts(self, run_id: str, path: str) -> dict[str, int]:
        files = self.get("artifacts/list", run_id=run_id, path=path).get("files", [])
        return {f["path"]: int(f.get("file_size", -1)) for f in files}

    def download(self, run_id: str, path: str) -> bytes:
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        with urllib.request.urlopen(f"{self.url}/get-artifact?{query}", timeout=30) as answer:
            return answer.read()


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        running.start()  # not waited for here: it comes up while the tiny shards are made
        yield running
    finally:
        running.kill()


def tiny_project(root: Path, shards: Path, experiment: str) -> tuple[Path, Params]:
    """A project folder with a tiny params file. Its tracking.uri must lose to MLFLOW_TRACKING_URI."""
    data = tiny_config(shards, tracking={"uri": "sqlite:///not-this.db", "experiment": experiment})
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root, Params.model_validate(data)


def opplan(command: str, project: Path, server: Server) -> subprocess.Popen:
    """``python -m opplan.cli <command> --params params.yaml`` in ``project``, output in ``<command>.log``."""
    env = {**os.environ, **ONE_THREAD, t.ENV_URI: server.url}
    with open(project / f"{command}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "opplan.cli", command, "--params", "params.yaml"],
                                cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, project: Path, command: str, timeout: float = 300) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = (project / f"{command}.log").read_text()
    assert process.returncode == 0, f"opplan {command} failed ({process.returncode}):\n{output[-5000:]}"
    return output


@pytest.fixture(scope="module")
def served_plan(server: Server, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Params]:
    """``opplan plan`` then ``opplan report`` against the server, undisturbed."""
    project, params = tiny_project(tmp_path_factory.mktemp("served") / "project", tiny_shards, "served")
    server.wait()
    finish(opplan("plan", project, server), project, "plan")
    finish(opplan("report", project, server), project, "report")
    return project, params


def test_plan_and_report_against_a_served_store(server: Server, served_plan: tuple[Path, Params]) -> None:
    project, params = served_plan
    edges = {(a.name, b.name) for a, b in graph_from_params(params.plan).edges}
    (planning,) = server.runs("served", t.KIND_PLANNING)
    plan = json.loads((project / "plan.json").read_text())
    assert plan["mlflow"]["tracking_uri"] == server.url
    assert plan["mlflow"]["planning_run_id"] == planning["info"]["run_id"]
    assert not (project / "not-this.db").exists() and not (project / "mlartifacts").exists()

    runs = server.runs("served", t.KIND_TRANSITION)
    assert sorted((tags(r)[t.TAG_SRC], tags(r)[t.TAG_DST]) for r in runs) == sorted(edges)
    experiment_id = server.experiment_id("served")
    for run in runs:
        run_id = run["info"]["run_id"]
        assert tags(run)[t.TAG_STATUS] == t.STATUS_FINISHED
        assert tags(run)["mlflow.parentRunId"] == planning["info"]["run_id"]
        history = server.get("metrics/get-history", run_id=run_id, metric_key=t.M_VAL_ACC)["metrics"]
        assert sorted(m["step"] for m in history) == list(range(int(metrics(run)[t.M_EPOCHS_TRAINED]) + 1))
        for path in (f"{t.ARTIFACT_CHECKPOINT_DIR}/model.pt", t.ARTIFACT_CURVE_PLOT):
            listed = {name.removeprefix("./"): size
                      for name, size in server.artifacts(run_id, str(Path(path).parent)).items()}
            assert path in listed
            body = server.download(run_id, path)
            assert len(body) == listed[path] > 100
            # stored by the server, under its --artifacts-destination
            assert (server.root / "artifacts" / experiment_id / run_id / "artifacts" / path).stat().st_size == len(body)

    table = pd.read_csv(project / "reports" / "transitions.csv")
    assert sorted(zip(table.src, table.dst)) == sorted(edges)
    assert server.url in (project / "reports" / "report.md").read_text()


def logged_an_epoch(server: Server, experiment: str) -> bool:
    """Whether a transition of ``experiment`` has logged a training epoch (its train_loss)."""
    try:
        return any(t.M_TRAIN_LOSS in metrics(run) for run in server.runs(experiment, t.KIND_TRANSITION))
    except (urllib.error.URLError, OSError, KeyError):  # no experiment yet
        return False


def test_a_plan_survives_the_server_going_down_and_coming_back(
        server: Server, served_plan: tuple[Path, Params], tiny_shards: Path, tmp_path: Path) -> None:
    project, params = tiny_project(tmp_path / "project", tiny_shards, "blink")
    plan = opplan("plan", project, server)
    try:
        deadline = time.monotonic() + 240
        while not logged_an_epoch(server, "blink"):
            assert plan.poll() is None and time.monotonic() < deadline, "the plan ended before an epoch was seen"
            time.sleep(0.1)
        server.kill()
        assert plan.poll() is None, "the plan had finished before the server went down"
        time.sleep(1)  # down for this plus the restart, itself 5-12 s here (imports, uvicorn's own process)
        server.start()
        server.wait()
    finally:
        output = finish(plan, project, "plan")

    assert f"WARNING opplan.tracking.retries: MLflow at {server.url}: " in output
    assert "(attempt 1), retrying in 1 s" in output
    edges = {(a.name, b.name) for a, b in graph_from_params(params.plan).edges}
    runs = server.runs("blink", t.KIND_TRANSITION)
    counted = [r for r in runs if tags(r)[t.TAG_STATUS] != t.STATUS_KILLED]
    assert sorted((tags(r)[t.TAG_SRC], tags(r)[t.TAG_DST]) for r in counted) == sorted(edges)
    assert all(tags(r)[t.TAG_STATUS] == t.STATUS_FINISHED for r in counted)
    assert len(server.runs("blink", t.KIND_PLANNING)) == 1

    undisturbed = json.loads((served_plan[0] / "plan.json").read_text())
    blinked = json.loads((project / "plan.json").read_text())
    for key in ("path", "epochs", "score"):
        assert blinked[key] == undisturbed[key]
    scores = {(r["src"], r["dst"]): (r["score"], r["epochs_trained"]) for r in undisturbed["explored"]}
    assert {(r["src"], r["dst"]): (r["score"], r["epochs_trained"]) for r in blinked["explored"]} == scores
