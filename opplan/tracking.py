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

import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from opplan.config import TrackingParams
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
TAG_KEEP = "opplan.keep"  # transition: knee | start | best_later (plan.keep_start_se)
TAG_CAPPED = "opplan.capped"  # transition: "true" when stopped by plan.max_epochs while still rising
TAG_DP_RUNNER_UP = "opplan.dp_runner_up"  # transition chosen into its state: the runner-up source
TAG_DP_TIE = "opplan.dp_tie"  # "true": chosen within the noise for fewer epochs (plan.decision: within_se)
TAG_FINAL_RUNNER_UP = "opplan.final_runner_up"  # planning: the runner-up final state
TAG_DIAGNOSIS = "opplan.diagnosis"  # planning: ok | at_chance,short_path (opplan.planning.diagnosis)
TAG_CREATE_TOKEN = "opplan.create_token"  # client-made id of a run: makes create_run safe to retry

KIND_PLANNING = "planning"
KIND_TRANSITION = "transition"
KIND_FINAL = "final"
KIND_BASELINE = "baseline"

STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_KILLED = "killed"

# --- metrics ----------------------------------------------------------------------
M_VAL_ACC = "val_acc"  # the planning signal (plan.metric) after each epoch, despite the name
M_VAL_SE = "val_se"  # its standard error over the validation videos
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
M_SCORE_SE = "V_se"  # the SE of V: that of the kept epoch's validation score
M_CAPPED = "capped"  # 1: stopped by plan.max_epochs while the curve still rose
M_START_MARGIN_SE = "start_margin_se"  # knee said t* = 0: the start's lead over the best later epoch, in SEs
M_DP_MARGIN = "dp_margin"  # on a state's chosen incoming transition: V - runner-up's V
M_DP_MARGIN_SE = "dp_margin_se"  # ... that margin in SEs of the difference
M_PATH_MIN_MARGIN_SE = "path_min_margin_se"  # planning run: the smallest margin in SEs along the path
M_FINAL_MARGIN_SE = "final_margin_se"  # planning run: the final state's margin over the runner-up final state
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


# --- retrying a tracking server that blinks --------------------------------------------

DEFAULT_RETRY_SECONDS = 600.0
"""How long one MLflow call is retried on transient errors before opplan gives up."""
MAX_WAIT_SECONDS = 30.0

MLFLOW_ENV_DEFAULTS = {
    # MLflow's HTTP client retries every request itself, without a word in opplan's log: 7 times
    # with backoff factor 2, about four minutes (MLFLOW_HTTP_REQUEST_* in
    # mlflow/environment_variables.py; urllib3's Retry in mlflow/utils/request_utils.py).
    # None here: an outage is waited out by `retrying`, which says so, one line per retry.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # only matters if the user sets retries
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",  # per request (default 120): a hung server is retried sooner
    # keep stage logs readable: no progress bars, no "View run at http://..." lines on stdout
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
TRANSIENT_TEXT = ("database is locked", "max retries exceeded", "failed with timeout exception",
                  "connection refused", "connection reset", "connection aborted", "remotedisconnected")
TRANSIENT_HTTP = frozenset({408, 429})  # and every 5xx

T = TypeVar("T")


def set_mlflow_env_defaults() -> None:
    """Apply :data:`MLFLOW_ENV_DEFAULTS` where the user has not set the variable."""
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself: the server or database is down, busy or slow.

    Everything else (a missing run, an invalid value, an existing name...) is raised at once.
    ``INTERNAL_ERROR`` is also what a bare ``MlflowException`` carries, so some bugs are
    retried too; they end as an :class:`OpplanError` with the error after ``retry_seconds``.
    """
    if isinstance(exc, ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code in TRANSIENT_HTTP
    if any(text in str(exc).lower() for text in TRANSIENT_TEXT):
        return True
    return isinstance(exc, MlflowException) and exc.error_code in TRANSIENT_CODES


def retrying(call: Callable[[], T], *, uri: str, operation: str, budget: float) -> T:
    """``call()``, retried on transient errors (:func:`is_transient`) with exponential backoff
    (1, 2, 4, ... s, at most :data:`MAX_WAIT_SECONDS`), one WARNING per retry.

    Raises :class:`OpplanError` naming ``uri``, ``operation`` and the last error when waiting
    again would go past ``budget`` seconds (a call that hangs may overrun it by its timeout).
    """
    deadline = time.monotonic() + budget
    wait = 1.0
    for attempt in itertools.count(1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]  # one line in the log
            if time.monotonic() + wait > deadline:
                raise OpplanError(f"MLflow at {uri}: {operation} still failing after {budget:g} s ({attempt} "
                                  f"attempts; is the tracking server up? tracking.retry_seconds sets how long "
                                  f"opplan waits); last error: {error}") from exc
            log.warning("MLflow at %s: %s failed (attempt %d), retrying in %g s: %s",
                        uri, operation, attempt, wait, error)
        time.sleep(wait)
        wait = min(2 * wait, MAX_WAIT_SECONDS)
    raise AssertionError("unreachable")


def resolve_uri(params_uri: str) -> str:
    """``MLFLOW_TRACKING_URI`` wins over params; a relative SQLite path is made absolute."""
    uri = os.environ.get(ENV_URI) or params_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


class Tracker:
    """A thin, explicit wrapper around ``MlflowClient`` for one experiment.

    Every client call goes through :meth:`_call` (:func:`retrying`): a tracking server or
    database that blinks delays training instead of killing it.
    """

    def __init__(self, uri: str, experiment: str, *, artifact_root: str | Path = "mlartifacts",
                 retry_seconds: float = DEFAULT_RETRY_SECONDS) -> None:
        self.uri = resolve_uri(uri)
        self.retry_seconds = retry_seconds
        set_mlflow_env_defaults()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(experiment, Path(artifact_root))

    @classmethod
    def from_params(cls, tracking: TrackingParams, *, suffix: str = "") -> Tracker:
        """The tracker of params' ``tracking`` section, on experiment ``<experiment><suffix>``."""
        return cls(tracking.uri, tracking.experiment + suffix, retry_seconds=tracking.retry_seconds)

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``method(*args, **kwargs)``, a bound ``MlflowClient`` method, retried (see :func:`retrying`)."""
        return retrying(lambda: method(*args, **kwargs), uri=self.uri, operation=method.__name__,
                        budget=self.retry_seconds)

    def _experiment(self, name: str, artifact_root: Path) -> str:
        found = self._call(self.client.get_experiment_by_name, name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise OpplanError(f"MLflow experiment {name!r} is deleted in {self.uri}; restore it or pick another name")
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            # A local store: keep artifacts beside the project, not in MLflow's cwd-relative default.
            location = (artifact_root.resolve() / name).as_uri()
        try:
            return self._call(self.client.create_experiment, name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process, or by a retry of a lost answer
            found = self._call(self.client.get_experiment_by_name, name)
            if found is None:
                raise
            return found.experiment_id

    # --- runs -------------------------------------------------------------------

    def create_run(self, name: str, tags: Mapping[str, Any], *, parent_id: str | None = None) -> str:
        """A new run's id. ``create_run`` is the one call that is not idempotent: when a blink
        loses the answer, the server may have made the run anyway. So each run carries a
        client-made token, and a retry first looks for a run with it. (Were a duplicate left
        anyway, the resume logic of the stages marks stale "running" runs killed.)"""
        token = uuid.uuid4().hex
        tags = {**{k: str(v) for k, v in tags.items()}, TAG_CREATE_TOKEN: token}
        if parent_id is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent_id
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

    def search(self, filters: Mapping[str, str], *, parent_id: str | None = None) -> list[Run]:
        """Active runs of this experiment whose tags equal ``filters``, oldest first."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in filters.items()]
        if parent_id is not None:
            clauses.append(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'")
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

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self._call(self.client.download_artifacts, run_id, path, str(dst)))

    def end_run(self, run_id: str, status: str) -> None:
        """Close a run; ``status`` is opplan's status, mapped onto MLflow's run status."""
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

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's ``(step, value)`` pairs in step order (the last value per step wins)."""
        by_step: dict[int, float] = {}
        for m in sorted(self._call(self.client.get_metric_history, run_id, key), key=lambda m: (m.step, m.timestamp)):
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

# --- the honest comparison (issue 12: seeds, HS selected on validation, paired tests) ---
KIND_HS_RETRAIN = "hs_retrain"  # the validation-selected HS, retrained on the full training set, per seed
KIND_OP_RETRAIN = "op_retrain"  # OP's path retrained with a further seed (final.seeds > 1)
TAG_SEED = "opplan.seed"  # op_retrain / hs_retrain: the training seed of a repeated retrain
M_VAL_TOP1 = "val_top1"  # baseline candidate: top-1 on the internal validation split (HS selection)
M_PLANNED_STEPS = "planned_steps"  # final: optimizer steps the path had during planning
M_STEPS = "optimizer_steps"  # final / hs_retrain: optimizer steps taken
ARTIFACT_PREDICTIONS = "predictions.json"  # per-video held-out correctness (opplan.predictions)


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

    def __init__(self, uri: str, experiment_id: str, *,  # noqa: D107 - see class docstring
                 retry_seconds: float = DEFAULT_RETRY_SECONDS) -> None:
        self.uri = uri
        self.retry_seconds = retry_seconds
        set_mlflow_env_defaults()
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id

    def read_json_artifact(self, run_id: str, path: str) -> Any | None:
        """A JSON artifact of a run, or ``None`` when the run has none at ``path``."""
        import json
        import tempfile

        parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
        names = {a.path for a in self._call(self.client.list_artifacts, run_id, parent)}
        if path not in names:
            return None
        bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
        previous = os.environ.get(bar)
        os.environ[bar] = "false"  # no progress bar on stderr for one small file
        try:
            with tempfile.TemporaryDirectory(prefix="opplan-artifact-") as tmp:
                local = self._call(self.client.download_artifacts, run_id, path, tmp)
                return json.loads(Path(local).read_text(encoding="utf-8"))
        finally:
            if previous is None:
                os.environ.pop(bar, None)
            else:
                os.environ[bar] = previous


def open_store(uri: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> dict[str, StoreReader]:
    """Readers of every active experiment of an existing store, by name.

    Raises :class:`OpplanError` when a local store does not exist (it is not created)
    or the store cannot be read (a server that does not answer: after ``retry_seconds``).
    """
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise OpplanError(f"no MLflow store at {uri}: {path} does not exist. Run the pipeline first "
                          f"(`dvc repro`, or `opplan plan`), or pass the right --tracking-uri")
    set_mlflow_env_defaults()
    client = MlflowClient(tracking_uri=uri)
    readers: dict[str, StoreReader] = {}
    token = None
    try:
        while True:
            page = retrying(partial(client.search_experiments, max_results=1000, page_token=token), uri=uri,
                            operation="search_experiments", budget=retry_seconds)
            readers |= {e.name: StoreReader(uri, e.experiment_id, retry_seconds=retry_seconds) for e in page}
            token = page.token
            if not token:
                return readers
    except OpplanError:
        raise
    except Exception as exc:  # any other backend failure: a broken file, a refused request
        raise OpplanError(f"cannot read the MLflow store at {uri}: {exc}") from exc
