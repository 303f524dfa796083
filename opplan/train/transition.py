"""One state transition ``Si -> Sj`` (paper §3.3, docs/design.md §3–4).

Start from ``Si``'s kept checkpoint (or a fresh ``S0`` model), train with ``Sj``'s
sampling, clip length and learning rate, evaluate the internal validation set after
every epoch, refit the knee, stop at the first epoch ``t >= t* + T`` and keep the
checkpoint of epoch ``t*``.

The curve's points are the planning signal ``plan.metric`` (top-1 as the paper, top-1/3/5
as the authors' code, or the mean true-class probability) over the internal-validation
videos, each scored on ``plan.val_clips`` uniformly spaced clips (1: the centre clip),
centre crop; with each point its standard error over the videos (``curve_se``,
:func:`opplan.stats.mean_se`). The kept epoch is the knee's, except that ``t* = 0`` stands
only when the start beats the best later epoch by more than ``plan.keep_start_se`` SEs
(:func:`opplan.planning.knee.keep_start_rule`); the score's SE is that of the kept epoch.

Every completed epoch is saved as an epoch state in the transition's work folder, so a
killed transition resumes from its last completed epoch (at most one epoch is lost).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from opplan import distributed
from opplan import names as n
from opplan.fileio import atomic_write_json
from opplan.planning.decisions import Bar
from opplan.planning.fitting import KneeFit
from opplan.planning.graph import State
from opplan.planning.knee import KeepStart, KneeDecision, KneeStopper, keep_start_rule, optimistic_bound
from opplan.planning.records import PRUNED
from opplan.stats import mean_se, per_video_scores
from opplan.train.checkpoint import (
    MODEL_FILE,
    epoch_state_path,
    latest_epoch_state,
    load_epoch_state,
    save_epoch_state,
    save_model,
    set_rng_state,
)
from opplan.train.loop import DivergedError
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TransitionOutcome:
    """What one transition produced; ``curve[k]`` is the planning signal after epoch k.

    ``curve_se[k]``: its standard error over the validation videos; ``se``: that of the kept
    epoch ``t_star``. ``capped``: stopped by ``plan.max_epochs`` while the curve still rose.
    ``keep``: why ``t_star`` was kept (:class:`~opplan.planning.knee.KeepStart`'s ``reason``)
    and ``start_margin_se`` how far the start lay above the best later epoch when the knee
    said 0.
    """

    status: str  # an opplan.names.Status: finished | failed | pruned (then ``bound`` could not reach ``bar``)
    curve: list[float] = field(default_factory=list)
    curve_se: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    clips_seen: int = 0
    t_star: int | None = None
    fitted: float | None = None
    observed: float | None = None
    fit_params: list[float] = field(default_factory=list)
    rmse: float | None = None
    r2: float | None = None
    checkpoint: Path | None = None
    failure: str | None = None
    se: float | None = None
    capped: bool = False
    keep: str | None = None
    start_margin_se: float | None = None
    bound: float | None = None
    bar: float | None = None

    @property
    def epochs_trained(self) -> int:
        return max(len(self.curve) - 1, 0)


def epoch_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed for one (transition, epoch): same inputs, same clips."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


CURVE_SE = "curve_se.json"  # beside the epoch states: the SEs of their curve (written first)


def validate(setup: TrainSetup, model: torch.nn.Module, dst: State) -> tuple[float, float]:
    """Planning's validation of ``model``: the mean of ``plan.metric`` over the internal-validation
    videos (each on ``plan.val_clips`` clips) and its standard error. Collective, like ``predict``."""
    plan = setup.params.plan
    scores, labels = setup.predict(model, "val", dst, mode="val", clips=plan.val_clips)
    values = per_video_scores(scores, labels, plan.metric)
    return (float(values.mean()) if len(values) else math.nan), mean_se(values)


@distributed.collective
def train_transition(setup: TrainSetup, dst: State, init: Path | None, work_dir: Path, *,
                     on_epoch: EpochCallback | None = None, label: str = "",
                     bar: Bar | None = None) -> TransitionOutcome:
    """Run (or resume) one transition into ``dst`` from the weights at ``init`` (None: S0).

    ``bar`` (``plan.prune``): after each epoch with a knee fit, stop as ``"pruned"`` once
    :func:`~opplan.planning.knee.optimistic_bound` (``plan.prune_z`` SEs) cannot reach it.

    Collective (see :mod:`opplan.distributed`): under ``torchrun`` every process trains;
    rank 0 alone reads ``init`` and the work folder, fits the knee, writes epoch states
    and calls ``on_epoch``, and tells the others when to stop.
    """
    world = distributed.world()
    model = setup.new_model(dst.clip_length)
    optimizer = setup.optimizer(model, setup.params.train.lr_for(dst.clip_length, dst.lr))
    scaler = setup.grad_scaler()
    out = TransitionOutcome(status="running")
    ledger = (_Ledger(setup, dst, work_dir, out, model, optimizer, scaler, on_epoch, label, bar)
              if world.is_main else None)

    start = distributed.on_main(lambda: ledger.restore(init))
    if not world.is_main:
        out.curve, out.losses, out.seconds = start["curve"], start["losses"], start["seconds"]
        out.curve_se = start["curve_se"]
        if start["optimizer"] is not None:
            optimizer.load_state_dict(start["optimizer"])
            scaler.load_state_dict(start["scaler"])
    net = distributed.wrap(model, setup.device)  # every process now holds rank 0's weights

    stop = distributed.on_main(lambda: ledger.replay()) if out.curve else None
    if not out.curve:
        _append_point(out, validate(setup, net, dst))
        stop = distributed.on_main(lambda: ledger.record(0))
    while not stop:
        epoch = len(out.curve)
        seed = epoch_seed(setup.params.seed, label, epoch)
        if world.enabled:  # dropout differs per process, yet is the same on every rerun
            torch.manual_seed(epoch_seed(seed, world.rank))
        try:
            result = setup.train_epoch(net, dst, optimizer, scaler, seed=seed, progress=f"{label} epoch {epoch}: ")
        except DivergedError as exc:  # raised on every process alike
            out.status, out.failure = n.STATUS_FAILED, str(exc)
            log.warning("%s failed: %s", label, exc)
            return out
        _append_point(out, validate(setup, net, dst))
        out.losses.append(result.loss)
        out.seconds.append(result.seconds)
        stop = distributed.on_main(lambda: ledger.record(epoch))
    return distributed.on_main(lambda: ledger.finish())


def _append_point(out: TransitionOutcome, point: tuple[float, float]) -> None:
    out.curve.append(point[0])
    out.curve_se.append(point[1])


class _Ledger:
    """Rank 0's side of a transition: the work folder's epoch states, the knee, ``on_epoch``."""

    def __init__(self, setup: TrainSetup, dst: State, work_dir: Path, out: TransitionOutcome,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 on_epoch: EpochCallback | None, label: str, bar: Bar | None = None) -> None:
        plan = setup.params.plan
        self.setup, self.dst, self.work_dir, self.out = setup, dst, work_dir, out
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.on_epoch, self.label = on_epoch, label
        self.stopper = KneeStopper(function=plan.fit_function, delay=plan.delay, max_epochs=plan.max_epochs,
                                   horizon=plan.horizon)
        self.decision: KneeDecision | None = None
        self.bar, self.prune_z, self.prune_from, self.pruned = bar, plan.prune_z, plan.prune_min_epochs, False

    def restore(self, init: Path | None) -> dict[str, Any]:
        """Load the last epoch state (a resumed transition) or ``init``'s weights; returns what
        the other processes need besides the weights."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        latest = latest_epoch_state(self.work_dir)
        if latest is None:
            if init is not None:
                self.setup.load_weights(self.model, init)
            return {"curve": [], "curve_se": [], "losses": [], "seconds": [], "optimizer": None, "scaler": None}
        state = load_epoch_state(latest, self.setup.identity)
        self.model.load_state_dict(state["state_dict"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.out.curve, self.out.losses, self.out.seconds = state["curve"], state["losses"], state["seconds"]
        self.out.curve_se = _read_curve_se(self.work_dir, len(self.out.curve))
        log.info("%s resuming after epoch %d (curve so far: %s)", self.label, state["epoch"],
                 ", ".join(f"{y:.3f}" for y in self.out.curve))
        return {"curve": list(self.out.curve), "curve_se": list(self.out.curve_se), "losses": list(self.out.losses),
                "seconds": list(self.out.seconds), "optimizer": state["optimizer"], "scaler": self.scaler.state_dict()}

    def replay(self) -> bool:
        """Feed a resumed curve to the knee again; returns whether it already says stop."""
        for y in self.out.curve:
            self.decision = self.stopper.update(y)
        if self.on_epoch is not None:  # the last epoch may not have reached MLflow
            self.on_epoch(len(self.out.curve) - 1, _epoch_metrics(self.out, self.dst, self.decision))
        return self.decision.stop or self._prune()

    def _prune(self) -> bool:
        """Whether the curve so far is dominated: its optimistic bound cannot reach the bar."""
        if self.bar is None or self.decision is None or self.decision.stop or self.decision.t < self.prune_from:
            return False
        se = self.out.curve_se[-1] if self.out.curve_se else math.nan
        bound = optimistic_bound(self.decision.fit, self.out.curve, se, self.prune_z, self.stopper.max_epochs)
        if bound is None or not self.bar.beats(bound, se):
            return False
        self.pruned, self.out.bound, self.out.bar = True, bound, self.bar.value
        return True

    def record(self, epoch: int) -> bool:
        """Epoch ``epoch`` is done (0: the starting model evaluated): refit the knee, save the
        epoch state, report it; returns whether to stop."""
        out = self.out
        self.decision = self.stopper.update(out.curve[-1])
        atomic_write_json(self.work_dir / CURVE_SE, [_json_float(v) for v in out.curve_se])  # before the state
        save_epoch_state(epoch_state_path(self.work_dir, epoch), model=self.model,
                         optimizer=self.optimizer if epoch else None, scaler=self.scaler,
                         identity=self.setup.identity, epoch=epoch, curve=out.curve, losses=out.losses,
                         seconds=out.seconds)
        if self.on_epoch is not None:
            self.on_epoch(epoch, _epoch_metrics(out, self.dst, self.decision))
        if epoch == 0:
            log.info("%s epoch 0 (start model): val %.4f ± %.4f", self.label, out.curve[0], out.curve_se[0])
        else:
            log.info("%s epoch %d: loss %.4f, val %.4f ± %.4f, %.1fs, %s", self.label, epoch, out.losses[-1],
                     out.curve[-1], out.curve_se[-1], out.seconds[-1],
                     knee_words(self.decision.t_star, epoch, self.stopper.horizon))
        return self.decision.stop or self._prune()

    def finish(self) -> TransitionOutcome:
        if self.pruned:
            self.out.status = PRUNED
            return self.out
        kept = keep_start_rule(self.out.curve, self.out.curve_se, self.decision.chosen_epoch,
                               self.setup.params.plan.keep_start_se)
        if kept.reason == "best_later":
            log.info("%s: the knee keeps the start model, but the start (%.4f ± %.4f) beats the best later epoch "
                     "%d (%.4f ± %.4f) by %.2f SE, not more than plan.keep_start_se = %g: keeping epoch %d",
                     self.label, self.out.curve[0], self.out.curve_se[0], kept.epoch, self.out.curve[kept.epoch],
                     self.out.curve_se[kept.epoch], kept.margin_se, self.setup.params.plan.keep_start_se, kept.epoch)
        return _finish(self.setup, self.out, self.decision, kept, self.stopper.last_fit, self.work_dir)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _read_curve_se(work_dir: Path, points: int) -> list[float]:
    """The SEs of a resumed curve's ``points`` points (NaN where they were never written)."""
    import json

    try:
        values = json.loads((work_dir / CURVE_SE).read_text())
    except (OSError, ValueError):
        values = []
    values = [math.nan if v is None else float(v) for v in values[:points]]
    return values + [math.nan] * (points - len(values))


def knee_words(t_star: int | None, epoch: int, horizon: int) -> str:
    """The knee as an epoch's log line gives it: only a maximiser within the epochs seen is a
    knee (as :func:`_epoch_metrics` logs it); one at ``horizon`` means the fit still rises."""
    if t_star is None:
        return "knee: not enough evidence yet"
    if t_star >= horizon:
        return "knee: none yet (the fit still rises)"
    if t_star > epoch:
        return f"knee: ahead (the fit peaks at epoch {t_star})"
    return f"knee t*={t_star}"


def _epoch_metrics(out: TransitionOutcome, dst: State, decision: KneeDecision | None) -> dict[str, float]:
    """What MLflow gets after each epoch: the curve point, and the knee fit when there is one.

    ``knee_t`` and ``knee_value`` only once the knee lies within the epochs seen (``t* <= t``):
    before that the fit's maximiser is an extrapolation to ``plan.horizon`` (a spike to 999 in
    MLflow's charts, a value far outside [0, 1]). The fit's coefficients go to one artifact at
    the end (:data:`~opplan.names.ARTIFACT_FIT`), not to a metric each; the learning
    rate is a param of the run, constant over a transition."""
    metrics = {n.M_VAL_ACC: out.curve[-1], n.M_VAL_SE: out.curve_se[-1] if out.curve_se else None}
    if out.losses and len(out.curve) > 1:
        metrics[n.M_TRAIN_LOSS] = out.losses[-1]
        metrics[n.M_EPOCH_SECONDS] = out.seconds[-1]
    fit = getattr(decision, "fit", None)
    if fit is not None:
        metrics[n.M_KNEE_RMSE] = fit.rmse
        metrics[n.M_KNEE_R2] = fit.r2
        if fit.t_star <= decision.t:
            metrics[n.M_KNEE_T] = fit.t_star
            metrics[n.M_KNEE_VALUE] = min(max(fit.value, 0.0), 1.0)  # plan.metric is a fraction in [0, 1]
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def fit_document(out: TransitionOutcome, function: str) -> dict[str, Any]:
    """The transition's knee fit as one JSON artifact: ``f`` of docs/design.md §4 with its
    coefficients ``a1, a2, ...``, the kept epoch and the fit's quality."""
    def clean(value: float | None) -> float | None:
        return None if value is None else _json_float(value)

    return {"function": function, "coefficients": {f"a{i}": clean(v) for i, v in enumerate(out.fit_params, start=1)},
            "chosen_epoch": out.t_star, "fitted_value": clean(out.fitted), "observed_value": clean(out.observed),
            "rmse": clean(out.rmse), "r2": clean(out.r2)}


def _finish(setup: TrainSetup, out: TransitionOutcome, decision: KneeDecision, kept: KeepStart,
            last_fit: KneeFit | None, work_dir: Path) -> TransitionOutcome:
    """Keep epoch ``kept.epoch``'s weights as ``model.pt``; drop the other epoch states."""
    # The kept epoch: t* (min(t*, t) when stopped by max_epochs; the best observed epoch
    # when no fit ever succeeded), or the best later epoch when the keep-start rule overrides
    # t* = 0. Its fitted value is f at that epoch (of the latest fit).
    t_star = kept.epoch
    fit = decision.fit
    out.t_star = t_star
    out.observed = out.curve[t_star]
    if t_star == decision.chosen_epoch:
        out.fitted = decision.chosen_value if decision.chosen_value is not None else out.observed
    else:
        out.fitted = float(last_fit.predict(t_star)) if last_fit is not None else out.observed
    out.se = out.curve_se[t_star] if t_star < len(out.curve_se) and math.isfinite(out.curve_se[t_star]) else None
    out.capped, out.keep, out.start_margin_se = decision.capped, kept.reason, kept.margin_se
    if fit is not None:
        out.fit_params, out.rmse, out.r2 = list(map(float, fit.params)), fit.rmse, fit.r2
    kept = load_epoch_state(epoch_state_path(work_dir, t_star), setup.identity)
    model = setup.new_model(0)
    model.load_state_dict(kept["state_dict"])
    out.checkpoint = work_dir / MODEL_FILE
    save_model(out.checkpoint, model, setup.identity, chosen_epoch=t_star)
    out.status = n.STATUS_FINISHED
    return out
