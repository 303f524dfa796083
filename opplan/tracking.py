"""MLflow: the only module that imports it.

Every run opplan makes is created here with explicit run ids (``MlflowClient``), not
through MLflow's global "active run", so nesting is explicit and nothing leaks
between transitions:

- one *planning* run per planning configuration (tag ``opplan.kind=planning``,
  ``opplan.config_hash``), parent of
- one nested *transition* run per explored edge ``Si -> Sj`` (tags ``opplan.src``,
  ``opplan.dst``, ``opplan.sampling``, ``opplan.clip_length``, ``opplan.lr``,
  ``opplan.status``), with per-epoch metrics and the kept checkpoint as artifact;
- a *final* run (the retrain along the chosen path) and its evaluation;
- *baseline* runs, one per hand-tuned candidate, in ``<experiment>-baselines``.

Metric and tag names are constants here and nowhere else (STYLE: avoid building keys
in one place and hard-coding them in another).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from opplan.errors import OpplanError

log = logging.getLogger(__name__)

# --- tags -----------------------------------------------------------------------
TAG_KIND = "opplan.kind"  # planning | transition | final | baseline
TAG_CONFIG_HASH = "opplan.config_hash"
TAG_MANIFEST_HASH = "opplan.manifest_hash"
TAG_SRC = "opplan.src"
TAG_DST = "opplan.dst"
TAG_SAMPLING = "opplan.sampling"
TAG_CLIP_LENGTH = "opplan.clip_length"
TAG_LR = "opplan.lr"
TAG_STATUS = "opplan.status"  # running | finished | failed | killed
TAG_FAILURE = "opplan.failure"
TAG_SCHEDULE = "opplan.schedule"  # baselines: sampling/schedule/decay/epochs
TAG_PLAN_RUN = "opplan.plan_run"  # final/evaluate: the planning run they follow

KIND_PLANNING = "planning"
KIND_TRANSITION = "transition"
KIND_FINAL = "final"
KIND_BASELINE = "baseline"

STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_KILLED = "killed"

# --- metrics ----------------------------------------------------------------------
M_VAL_ACC = "val_acc"
M_TRAIN_LOSS = "train_loss"
M_LR = "lr"
M_EPOCH_SECONDS = "epoch_seconds"
M_CLIP_LENGTH = "clip_length"
M_SAMPLING_US = "sampling_uniform"  # 1 for uniform, 0 for consecutive (final's schedule)
M_KNEE_T = "knee_t"
M_KNEE_VALUE = "knee_value"
M_KNEE_RMSE = "knee_rmse"
M_KNEE_R2 = "knee_r2"
M_KNEE_PARAM = "knee_a{}"  # knee_a1, knee_a2, ... the fit parameters after each epoch
M_CHOSEN_EPOCH = "chosen_epoch"
M_SCORE = "V"
M_FITTED = "fitted_value"
M_OBSERVED = "observed_value"
M_EPOCHS_TRAINED = "epochs_trained"
M_CLIPS_SEEN = "clips_seen"
M_COMPUTE_SECONDS = "compute_seconds"
M_TOP1 = "top1"
M_TOP5 = "top5"
M_MEAN_CLASS_ACC = "mean_class_acc"
M_SINGLE_VIEW_TOP1 = "single_view_top1"

ARTIFACT_CHECKPOINT_DIR = "checkpoint"
ARTIFACT_PLOTS_DIR = "plots"

ENV_URI = "MLFLOW_TRACKING_URI"


def resolve_uri(params_uri: str) -> str:
    """``MLFLOW_TRACKING_URI`` wins over params; a relative SQLite path is made absolute."""
    uri = os.environ.get(ENV_URI) or params_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


class Tracker:
    """A thin, explicit wrapper around ``MlflowClient`` for one experiment."""

    def __init__(self, uri: str, experiment: str, *, artifact_root: str | Path = "mlartifacts") -> None:
        self.uri = resolve_uri(uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stage logs readable
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(experiment, Path(artifact_root))

    def _experiment(self, name: str, artifact_root: Path) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise OpplanError(f"MLflow experiment {name!r} is deleted in {self.uri}; restore it or pick another name")
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            # A local store: keep artifacts beside the project, not in MLflow's cwd-relative default.
            location = (artifact_root.resolve() / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # --- runs -------------------------------------------------------------------

    def create_run(self, name: str, tags: Mapping[str, Any], *, parent_id: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()}
        if parent_id is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent_id
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        return run.info.run_id

    def search(self, filters: Mapping[str, str], *, parent_id: str | None = None) -> list[Run]:
        """Active runs of this experiment whose tags equal ``filters``, oldest first."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in filters.items()]
        if parent_id is not None:
            clauses.append(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'")
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], " and ".join(clauses), max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def get_run(self, run_id: str) -> Run:
        return self.client.get_run(run_id)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_artifact(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_dir)

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def end_run(self, run_id: str, status: str) -> None:
        """Close a run; ``status`` is opplan's status, mapped onto MLflow's run status."""
        mlflow_status = {STATUS_FINISHED: "FINISHED", STATUS_FAILED: "FAILED", STATUS_KILLED: "KILLED"}[status]
        self.set_tags(run_id, {TAG_STATUS: status})
        self.client.set_terminated(run_id, status=mlflow_status)

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

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's ``(step, value)`` pairs in step order (the last value per step wins)."""
        by_step: dict[int, float] = {}
        for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
            by_step[m.step] = m.value
        return sorted(by_step.items())


def flatten(prefix: str, data: Any) -> dict[str, Any]:
    """``{"plan": {"lrs": [..]}}`` -> ``{"plan.lrs": "[..]"}`` for MLflow params."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
        return out
    return {prefix: data}


def tags_of(runs: Iterable[Run], key: str) -> list[str]:
    return [run.data.tags.get(key, "") for run in runs]


# --- reading an existing store (``opplan report``, ``bench/cost.py``) -------------------
# Reading never creates anything: not the store, not an experiment, not a run.

TAG_CLIP_SCHEDULE = "opplan.clip_schedule"  # baselines: l1-lN | l2-lN | all
TAG_DECAY = "opplan.decay"  # baselines: step | cosine
TAG_EPOCHS = "opplan.epochs"  # baselines: total epochs of the candidate
ARTIFACT_PLAN_JSON = "plan.json"  # the planning run's plan document


def resolve_read_uri(explicit: str | None, params_uri: str) -> str:
    """An explicit URI (``--tracking-uri``) wins over ``MLFLOW_TRACKING_URI`` and params."""
    if explicit is None:
        return resolve_uri(params_uri)
    prefix = "sqlite:///"
    if explicit.startswith(prefix) and not explicit[len(prefix):].startswith("/"):
        return prefix + str(Path(explicit[len(prefix):]).resolve())
    return explicit


def local_store_path(uri: str) -> Path | None:
    """The database file or folder of a local store; ``None`` for a tracking server."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file://"):
        from urllib.parse import urlparse

        return Path(urlparse(uri).path)
    return None if "://" in uri else Path(uri)


class StoreReader(Tracker):
    """A :class:`Tracker` over an experiment that already exists (``uri`` used as given).

    ``Tracker.__init__`` is deliberately not called: it would create the experiment.
    """

    def __init__(self, uri: str, experiment_id: str) -> None:  # noqa: D107 - see class docstring
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id

    def read_json_artifact(self, run_id: str, path: str) -> Any | None:
        """A JSON artifact of a run, or ``None`` when the run has none at ``path``."""
        import json
        import tempfile

        parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
        names = {a.path for a in self.client.list_artifacts(run_id, parent)}
        if path not in names:
            return None
        bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
        previous = os.environ.get(bar)
        os.environ[bar] = "false"  # no progress bar on stderr for one small file
        try:
            with tempfile.TemporaryDirectory(prefix="opplan-artifact-") as tmp:
                local = self.client.download_artifacts(run_id, path, tmp)
                return json.loads(Path(local).read_text(encoding="utf-8"))
        finally:
            if previous is None:
                os.environ.pop(bar, None)
            else:
                os.environ[bar] = previous


def open_store(uri: str) -> dict[str, StoreReader]:
    """Readers of every active experiment of an existing store, by name.

    Raises :class:`OpplanError` when a local store does not exist (it is not created)
    or the store cannot be read.
    """
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise OpplanError(f"no MLflow store at {uri}: {path} does not exist. Run the pipeline first "
                          f"(`dvc repro`, or `opplan plan`), or pass the right --tracking-uri")
    client = MlflowClient(tracking_uri=uri)
    readers: dict[str, StoreReader] = {}
    token = None
    try:
        while True:
            page = client.search_experiments(max_results=1000, page_token=token)
            readers |= {e.name: StoreReader(uri, e.experiment_id) for e in page}
            token = page.token
            if not token:
                return readers
    except Exception as exc:  # any backend failure: a broken file, an unreachable server
        raise OpplanError(f"cannot read the MLflow store at {uri}: {exc}") from exc
