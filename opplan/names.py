"""Every name opplan gives things in MLflow: tags, metrics, artifacts, experiments.

Outside :mod:`opplan.tracking` and without an MLflow import: training code
(``opplan.train``) names its metrics from this module and imports nothing of ``tracking``.
Nothing else spells these strings: a key built in one place is never hard-coded in another.

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

from enum import StrEnum

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
TAG_KEEP = "opplan.keep"  # transition: knee | start | best_later (plan.keep_start_se)
TAG_CAPPED = "opplan.capped"  # transition: "true" when stopped by plan.max_epochs while still rising
TAG_PRUNED = "opplan.pruned"  # transition: "true" when stopped by plan.prune (its bound below the bar)
TAG_DP_RUNNER_UP = "opplan.dp_runner_up"  # transition chosen into its state: the runner-up source
TAG_DP_VERSUS = "opplan.dp_versus"  # every finished transition: the source its dp_margin_se is measured against
TAG_ON_PATH = "opplan.on_path"  # transition: "true" on the chosen path, "false" off it (set after the DP)
TAG_RUN_NAME = "mlflow.runName"  # MLflow's own tag of a run's name: setting it renames the run
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own tag of a nested run's parent
PATH_MARK = "★ "  # in front of the run name of a transition on the chosen path (set with TAG_ON_PATH)
TAG_DP_TIE = "opplan.dp_tie"  # "true": chosen within the noise for fewer epochs (plan.decision: within_se)
TAG_FINAL_RUNNER_UP = "opplan.final_runner_up"  # planning: the runner-up final state
TAG_DIAGNOSIS = "opplan.diagnosis"  # planning: ok | at_chance,short_path (opplan.planning.diagnosis)
TAG_SEED = "opplan.seed"  # op_retrain / hs_retrain: the training seed of a repeated retrain
TAG_MATCH_STEPS = "opplan.match_steps"  # final / op_retrain: "True" when trained with final.match_steps
TAG_CREATE_TOKEN = "opplan.create_token"  # client-made id of a run: makes create_run safe to retry
TAG_CHECKPOINT_SHA256 = "opplan.checkpoint_sha256"  # checkpoint/model.pt's digest when logged; checked on download

KIND_PLANNING = "planning"
KIND_TRANSITION = "transition"
KIND_FINAL = "final"
KIND_BASELINE = "baseline"
KIND_HS_RETRAIN = "hs_retrain"  # the validation-selected HS, retrained on the full training set, per seed
KIND_OP_RETRAIN = "op_retrain"  # OP's path retrained with a further seed (final.seeds > 1)



class Status(StrEnum):
    """A run's ``opplan.status`` tag, and the outcome of a transition or schedule (the one list
    of these words; each member equals its string, so tags, plan.json and tables read the same)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"
    PRUNED = "pruned"  # a transition stopped by plan.prune (docs/design.md, "Pruning")


STATUS_RUNNING = Status.RUNNING
STATUS_FINISHED = Status.FINISHED
STATUS_FAILED = Status.FAILED
STATUS_KILLED = Status.KILLED
ENDED = (STATUS_FINISHED, STATUS_FAILED)
"""A run with one of these statuses is done: it is reused, never trained again."""

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
M_KNEE_PARAM = "knee_a{}"  # knee_a1, ...: the fit parameters as an older opplan logged them (now ARTIFACT_FIT)
M_CHOSEN_EPOCH = "chosen_epoch"
M_SCORE = "V"
M_SCORE_SE = "V_se"  # the SE of V: that of the kept epoch's validation score
M_CAPPED = "capped"  # 1: stopped by plan.max_epochs while the curve still rose
M_PRUNE_BOUND = "prune_bound"  # pruned transition: its optimistic bound when stopped
M_PRUNE_BAR = "prune_bar"  # pruned transition: the best V into its state it could not reach
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
M_HELDOUT_SIGNAL = "heldout_plan_signal"  # plan.metric on the held-out split, with planning's validation protocol
M_VAL_TOP1 = "val_top1"  # baseline candidate: top-1 on the internal validation split (HS selection)
M_PLANNED_STEPS = "planned_steps"  # final: optimizer steps the path had during planning
M_STEPS = "optimizer_steps"  # final / hs_retrain: optimizer steps taken

# --- artifacts --------------------------------------------------------------------
ARTIFACT_CHECKPOINT_DIR = "checkpoint"
ARTIFACT_CHECKPOINT = f"{ARTIFACT_CHECKPOINT_DIR}/model.pt"  # a transition's kept weights, the final model
ARTIFACT_PLOTS_DIR = "plots"
ARTIFACT_CURVE_PLOT = "curve.png"  # a transition's curve and fit, at the artifact root (MLflow's compare page shows those)
ARTIFACT_FIT = "fit.json"  # a transition's knee fit: function, coefficients a1.., knee, rmse, r2
ARTIFACT_PLAN_JSON = "plan.json"  # the planning run's plan document
ARTIFACT_PREDICTIONS = "predictions.json"  # per-video held-out correctness (opplan.predictions)

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


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment (route of MLflow 3's UI)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
