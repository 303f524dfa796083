"""The MLflow client: the only module that creates, writes and reads runs.

Every run opplan makes is created here with explicit run ids (``MlflowClient``), not
through MLflow's global "active run", so nesting is explicit and nothing leaks
between transitions. Names of tags and metrics: :mod:`opplan.names`; which run
a piece of work uses: :mod:`opplan.tracking.lifecycle`; retries: :mod:`opplan.tracking.retries`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from opplan.config import TrackingParams
from opplan.errors import OpplanError
from opplan.names import (
    ARTIFACT_CHECKPOINT,
    ARTIFACT_CHECKPOINT_DIR,
    BASELINES_SUFFIX,
    ENV_URI,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_KILLED,
    TAG_CHECKPOINT_SHA256,
    TAG_CREATE_TOKEN,
    TAG_PARENT_RUN,
    TAG_STATUS,
)
from opplan.tracking.retries import DEFAULT_RETRY_SECONDS, retrying, set_mlflow_env_defaults
from opplan.tracking.store import SQLITE, check_readable, ensure_store, sqlite_path

T = TypeVar("T")


def resolve_uri(params_uri: str) -> str:
    """``MLFLOW_TRACKING_URI`` wins over params; a relative SQLite path is made absolute."""
    return absolute_uri(os.environ.get(ENV_URI) or params_uri)


def project_root() -> Path:
    """The project a relative store path belongs to: the DVC repository a stage runs for
    (``DVC_ROOT``), else the working directory. ``dvc exp run --temp`` and ``--queue`` run
    stages in a temporary copy of the workspace, without git-ignored files such as the store,
    and set ``DVC_ROOT`` to the repository they were started from; their runs go to its
    store, and the artifacts of an experiment they create to its ``mlartifacts/``, where
    ``dvc repro`` finds them again (docs/operations.md, "Experiments")."""
    return Path(os.environ.get("DVC_ROOT") or ".")


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite path made absolute against :func:`project_root`
    (other URIs as given)."""
    db = sqlite_path(uri)
    if db is not None and not uri[len(SQLITE):].startswith("/"):
        return SQLITE + str((project_root() / db).resolve())
    return uri


def resolve_read_uri(explicit: str | None, params_uri: str) -> str:
    """An explicit URI (``--tracking-uri``) wins over ``MLFLOW_TRACKING_URI`` and params."""
    return resolve_uri(params_uri) if explicit is None else absolute_uri(explicit)


def local_store_path(uri: str) -> Path | None:
    """The database file or folder of a local store; ``None`` for a tracking server."""
    db = sqlite_path(uri)
    if db is not None:
        return db
    if uri.startswith("file://"):
        from urllib.parse import urlparse

        return Path(urlparse(uri).path)
    return None if "://" in uri else Path(uri)


class Store:
    """Reading one experiment of an existing store (``opplan report``, ``bench/cost.py``, and
    every stage through :class:`Tracker`). Reading never creates anything.

    Every client call goes through :meth:`_call` (:func:`~opplan.tracking.retries.retrying`):
    a tracking server or database that blinks delays the work instead of killing it.
    """

    def __init__(self, uri: str, experiment_id: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> None:
        self.uri = uri
        self.retry_seconds = retry_seconds
        set_mlflow_env_defaults()
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``method(*args, **kwargs)``, a bound ``MlflowClient`` method, retried (see :func:`retrying`)."""
        return retrying(lambda: method(*args, **kwargs), uri=self.uri, operation=method.__name__,
                        budget=self.retry_seconds)

    def search(self, filters: Mapping[str, str], *, parent_id: str | None = None) -> list[Run]:
        """Active runs of this experiment whose tags equal ``filters``, oldest first."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in filters.items()]
        if parent_id is not None:
            clauses.append(f"tags.`{TAG_PARENT_RUN}` = '{parent_id}'")
        runs: list[Run] = []
        token = None
        while True:
            page = self._call(
                self.client.search_runs, [self.experiment_id], " and ".join(clauses), max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def get_run(self, run_id: str) -> Run:
        return self._call(self.client.get_run, run_id)

    def find_run(self, run_id: str) -> Run | None:
        """The run ``run_id``, or None where the store has no such run (other errors raise)."""
        try:
            return self.get_run(run_id)
        except MlflowException:
            return None

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's ``(step, value)`` pairs in step order (the last value per step wins)."""
        by_step: dict[int, float] = {}
        for m in sorted(self._call(self.client.get_metric_history, run_id, key), key=lambda m: (m.step, m.timestamp)):
            by_step[m.step] = m.value
        return sorted(by_step.items())

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self._call(self.client.download_artifacts, run_id, path, str(dst)))

    def set_experiment_tag(self, key: str, value: str) -> None:
        """The one write a reader makes: a saved view of MLflow's UI (:mod:`opplan.tracking.views`)."""
        self._call(self.client.set_experiment_tag, self.experiment_id, key, value)

    def download_checkpoint(self, run_id: str, dst: str | Path) -> Path:
        """A run's ``checkpoint/model.pt``, checked against the SHA-256 recorded when it was logged
        (:meth:`Tracker.log_checkpoint`). A file that differs (replaced by another model, or cut
        short) is a damaged run, never its result: :class:`OpplanError` names the run and artifact.
        Runs logged before digests were recorded carry none and are taken as they are."""
        from opplan.fileio import file_digest

        path = self.download_artifact(run_id, ARTIFACT_CHECKPOINT, dst)
        expected = self.get_run(run_id).data.tags.get(TAG_CHECKPOINT_SHA256)
        if expected is not None and file_digest(path) != expected:
            path.unlink(missing_ok=True)
            raise OpplanError(
                f"MLflow run {run_id}: its artifact {ARTIFACT_CHECKPOINT} is not the checkpoint the run logged "
                f"(sha256 differs from its tag {TAG_CHECKPOINT_SHA256}: replaced or damaged in the store at {self.uri}). "
                f"The run is damaged: delete it (`mlflow runs delete --run-id {run_id}`, with MLFLOW_TRACKING_URI "
                f"set to the store) and run the stage again to train it anew")
        return path

    def read_json_artifact(self, run_id: str, path: str) -> Any | None:
        """A JSON artifact of a run, or ``None`` when the run has none at ``path``."""
        parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
        names = {a.path for a in self._call(self.client.list_artifacts, run_id, parent)}
        if path not in names:
            return None
        with tempfile.TemporaryDirectory(prefix="opplan-artifact-") as tmp:
            local = self._call(self.client.download_artifacts, run_id, path, tmp)
            return json.loads(Path(local).read_text(encoding="utf-8"))


class Tracker(Store):
    """Writing runs of one experiment; the local store and the experiment are created when
    missing (:mod:`opplan.tracking.store`), the experiment marked for MLflow's runs view."""

    def __init__(self, uri: str, experiment: str, *, artifact_root: str | Path | None = None,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS, system_metrics_seconds: float = 0.0) -> None:
        uri = resolve_uri(uri)
        ensure_store(uri)  # before the client: MlflowClient itself would create a missing store
        super().__init__(uri, "", retry_seconds=retry_seconds)
        # ``mlartifacts/`` of the project, like a relative store: an experiment first made by a
        # stage of ``dvc exp run --temp`` must not keep its artifacts in the copy DVC deletes
        root = project_root() / "mlartifacts" if artifact_root is None else Path(artifact_root)
        self.experiment_id = self._experiment(experiment, root)
        self.system_metrics_seconds = system_metrics_seconds
        self._monitors: dict[str, Any] = {}

    @classmethod
    def from_params(cls, tracking: TrackingParams, *, baselines: bool = False) -> Tracker:
        """The tracker of params' ``tracking`` section; ``baselines``: on ``<experiment>-baselines``."""
        return cls(tracking.uri, tracking.experiment + (BASELINES_SUFFIX if baselines else ""),
                   retry_seconds=tracking.retry_seconds, system_metrics_seconds=tracking.system_metrics_seconds)

    def _experiment(self, name: str, artifact_root: Path) -> str:
        found = self._call(self.client.get_experiment_by_name, name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise OpplanError(f"MLflow experiment {name!r} is deleted in {self.uri}; restore it or pick another name")
            if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an older opplan
                self._call(self.client.set_experiment_tag, found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            # A local store: keep artifacts beside the project, not in MLflow's cwd-relative default.
            location = (artifact_root.resolve() / name).as_uri()
        try:
            return self._call(self.client.create_experiment, name, artifact_location=location,
                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by another process, or by a retry of a lost answer
            found = self._call(self.client.get_experiment_by_name, name)
            if found is None:
                raise
            return found.experiment_id

    def create_run(self, name: str, tags: Mapping[str, Any], *, parent_id: str | None = None) -> str:
        """A new run's id. ``create_run`` is the one call that is not idempotent: when a blink
        loses the answer, the server may have made the run anyway. So each run carries a
        client-made token, and a retry first looks for a run with it. (Were a duplicate left
        anyway, :mod:`opplan.tracking.lifecycle` marks the stale "running" one killed.)"""
        token = uuid.uuid4().hex
        tags = {**{k: str(v) for k, v in tags.items()}, TAG_CREATE_TOKEN: token}
        if parent_id is not None:
            tags[TAG_PARENT_RUN] = parent_id
        attempts = 0

        def create() -> Run:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                made = self.client.search_runs([self.experiment_id], f"tags.`{TAG_CREATE_TOKEN}` = '{token}'")
                if made:
                    return made[0]
            return self.client.create_run(self.experiment_id, tags=tags, run_name=name)

        return retrying(create, uri=self.uri, operation="create_run", budget=self.retry_seconds).info.run_id

    # log_batch, set_terminated and log_artifact are safe to repeat with the same arguments:
    # MLflow skips a metric it has (same key, step, timestamp, value) and overwrites the rest.

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._call(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self._call(self.client.log_batch, run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self._call(self.client.log_batch, run_id, metrics=batch)

    def log_artifact(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        self._call(self.client.log_artifact, run_id, str(path), artifact_dir)

    def watch_system(self, run_id: str) -> None:
        """Log system metrics into ``run_id`` until :meth:`end_run` closes it
        (:mod:`opplan.tracking.system`; off when ``system_metrics_seconds`` is 0)."""
        if run_id not in self._monitors:
            from opplan.tracking.system import start_monitor

            monitor = start_monitor(run_id, self.uri, self.system_metrics_seconds)
            if monitor is not None:
                self._monitors[run_id] = monitor

    def log_checkpoint(self, run_id: str, path: str | Path) -> None:
        """Log ``path`` as the run's ``checkpoint/model.pt``, its SHA-256 first as a tag, so that
        every download can tell the run's own weights from a replaced or truncated file."""
        from opplan.fileio import file_digest

        self.set_tags(run_id, {TAG_CHECKPOINT_SHA256: file_digest(path)})
        self.log_artifact(run_id, path, ARTIFACT_CHECKPOINT_DIR)

    def end_run(self, run_id: str, status: str) -> None:
        """Close a run; ``status`` is opplan's status, mapped onto MLflow's run status."""
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:  # its last samples go in while the run is still open
            monitor.finish()
        mlflow_status = {STATUS_FINISHED: "FINISHED", STATUS_FAILED: "FAILED", STATUS_KILLED: "KILLED"}[status]
        self.set_tags(run_id, {TAG_STATUS: status})
        self._call(self.client.set_terminated, run_id, status=mlflow_status)

    def epoch_logger(self, run_id: str, key: str) -> Callable[[int, Mapping[str, float]], None]:
        """An ``on_epoch`` callback that logs each epoch's metrics once. A resumed run replays
        its last saved epoch, which the run already has unless the kill came between saving
        the epoch and logging it; ``key`` (logged every epoch) tells which epochs it has."""
        logged = {step for step, _ in self.history(run_id, key)}

        def log_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
            if epoch not in logged:
                self.log_metrics(run_id, metrics, step=epoch)
                logged.add(epoch)

        return log_epoch


def flatten(prefix: str, data: Any) -> dict[str, Any]:
    """``{"plan": {"lrs": [..]}}`` -> ``{"plan.lrs": "[..]"}`` for MLflow params."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
        return out
    return {prefix: data}


def open_store(uri: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> dict[str, Store]:
    """Readers of every active experiment of an existing store, by name.

    Raises :class:`OpplanError` when a local store does not exist (it is not created)
    or the store cannot be read (a server that does not answer: after ``retry_seconds``).
    """
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise OpplanError(f"no MLflow store at {uri}: {path} does not exist. Run the pipeline first "
                          f"(`dvc repro`, or `opplan plan`), or pass the right --tracking-uri")
    check_readable(uri)  # reading never migrates: a foreign or broken file is refused untouched
    set_mlflow_env_defaults()
    client = MlflowClient(tracking_uri=uri)
    readers: dict[str, Store] = {}
    token = None
    try:
        while True:
            page = retrying(partial(client.search_experiments, max_results=1000, page_token=token), uri=uri,
                            operation="search_experiments", budget=retry_seconds)
            readers |= {e.name: Store(uri, e.experiment_id, retry_seconds=retry_seconds) for e in page}
            token = page.token
            if not token:
                return readers
    except OpplanError:
        raise
    except Exception as exc:  # any other backend failure: a broken file, a refused request
        raise OpplanError(f"cannot read the MLflow store at {uri}: {exc}") from exc

