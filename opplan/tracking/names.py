"""Every name opplan gives things in MLflow: tags, metrics, artifacts, experiments.

No MLflow import here: training code (``opplan.train``) names its metrics from this
module without loading MLflow. Nothing else spells these strings (STYLE: a key built in
one place is never hard-coded in another).

What the names describe (runs are made by :mod:`opplan.tracking.lifecycle`):

- one *planning* run per planning configuration (``opplan.kind=planning``,
  ``opplan.config_hash``), parent of
- one nested *transition* run per explored edge ``Si -> Sj`` (``opplan.src``,
  ``opplan.dst``, ``opplan.sampling``, ``opplan.clip_length``, ``opplan.lr``,
  ``opplan.status``), with per-epoch metrics and the kept checkpoint as artifact;
- a *final* run (the retrain along the chosen path) and its evaluation;
- *baseline* runs, one per hand-tuned candidate, in ``<experiment>-baselines``.
"""

from __future__ import annotations

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
TAG_CLIP_SCHEDULE = "opplan.clip_schedule"  # baselines: l1-lN | l2-lN | all
TAG_DECAY = "opplan.decay"  # baselines: step | cosine
TAG_EPOCHS = "opplan.epochs"  # baselines: total epochs of the candidate
TAG_PLAN_RUN = "opplan.plan_run"  # final/evaluate: the planning run they follow
TAG_CREATE_TOKEN = "opplan.create_token"  # client-made id of a run: makes create_run safe to retry

KIND_PLANNING = "planning"
KIND_TRANSITION = "transition"
KIND_FINAL = "final"
KIND_BASELINE = "baseline"

STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_KILLED = "killed"
ENDED = (STATUS_FINISHED, STATUS_FAILED)
"""A run with one of these statuses is done: it is reused, never trained again."""

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

# --- artifacts --------------------------------------------------------------------
ARTIFACT_CHECKPOINT_DIR = "checkpoint"
ARTIFACT_CHECKPOINT = f"{ARTIFACT_CHECKPOINT_DIR}/model.pt"  # a transition's kept weights, the final model
ARTIFACT_PLOTS_DIR = "plots"
ARTIFACT_PLAN_JSON = "plan.json"  # the planning run's plan document

# --- experiments and the store ------------------------------------------------------
BASELINES_SUFFIX = "-baselines"
"""Baseline runs live in ``<tracking.experiment>-baselines``."""
ENV_URI = "MLFLOW_TRACKING_URI"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment of this kind on its runs table ("Model training"),
not on the GenAI traces overview (the tag its UI itself sets when a user picks the kind)."""


def checkpoint_uri(run_id: str) -> str:
    """The ``runs:/`` URI of a run's kept checkpoint."""
    return f"runs:/{run_id}/{ARTIFACT_CHECKPOINT}"


def baselines_experiment(experiment: str) -> str:
    return experiment + BASELINES_SUFFIX


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment (route of MLflow 3's UI)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
