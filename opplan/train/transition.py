"""One state transition ``Si -> Sj`` (paper §3.3, SPEC §3–§4).

Start from ``Si``'s kept checkpoint (or a fresh ``S0`` model), train with ``Sj``'s
sampling, clip length and learning rate, evaluate the internal validation set after
every epoch (single centre clip, centre crop), refit the knee, stop at the first epoch
``t >= t* + T`` and keep the checkpoint of epoch ``t*``.

Every completed epoch is saved as an epoch state in the transition's work folder, so a
killed transition resumes from its last completed epoch (at most one epoch is lost).
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from opplan import tracking as t
from opplan.planning.graph import State
from opplan.planning.knee import KneeDecision, KneeStopper
from opplan.train.checkpoint import load_epoch_state, save_epoch_state, save_model, set_rng_state
from opplan.train.loop import DivergedError, accuracy, predict, train_epoch
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TransitionOutcome:
    """What one transition produced; ``curve[k]`` is the validation accuracy after epoch k."""

    status: str  # "finished" | "failed"
    curve: list[float] = field(default_factory=list)
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

    @property
    def epochs_trained(self) -> int:
        return max(len(self.curve) - 1, 0)


def epoch_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed for one (transition, epoch): same inputs, same clips."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _latest_state(work_dir: Path) -> Path | None:
    states = sorted(work_dir.glob("epoch_*.pt"))
    return states[-1] if states else None


def train_transition(setup: TrainSetup, dst: State, init: Path | None, work_dir: Path, *,
                     on_epoch: EpochCallback | None = None, label: str = "") -> TransitionOutcome:
    """Run (or resume) one transition into ``dst`` from the weights at ``init`` (None: S0)."""
    plan = setup.params.plan
    work_dir.mkdir(parents=True, exist_ok=True)
    model = setup.new_model(dst.clip_length)
    optimizer = setup.optimizer(model, dst.lr)
    stopper = KneeStopper(function=plan.fit_function, delay=plan.delay, max_epochs=plan.max_epochs,
                          horizon=plan.horizon)
    out = TransitionOutcome(status="running")
    val_loader = setup.loader("val", dst, mode="val")

    latest = _latest_state(work_dir)
    if latest is not None:
        state = load_epoch_state(latest, setup.identity)
        model.load_state_dict(state["state_dict"])
        if state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        out.curve, out.losses, out.seconds = state["curve"], state["losses"], state["seconds"]
        log.info("%s resuming after epoch %d (curve so far: %s)", label, state["epoch"],
                 ", ".join(f"{y:.3f}" for y in out.curve))
        decision = None
        for y in out.curve:
            decision = stopper.update(y)
        if on_epoch is not None and out.curve:  # the last epoch may not have reached MLflow
            on_epoch(len(out.curve) - 1, _epoch_metrics(out, dst, decision))
    else:
        if init is not None:
            setup.load_weights(model, init)
        y0 = accuracy(*predict(model, val_loader, setup.device))
        out.curve = [y0]
        decision = stopper.update(y0)
        save_epoch_state(work_dir / "epoch_000.pt", model=model, optimizer=None, identity=setup.identity,
                         epoch=0, curve=out.curve, losses=out.losses, seconds=out.seconds)
        if on_epoch is not None:
            on_epoch(0, _epoch_metrics(out, dst, decision))
        log.info("%s epoch 0 (start model): val_acc %.4f", label, y0)

    while decision is None or not decision.stop:
        epoch = len(out.curve)
        loader = setup.loader("train", dst, mode="train", seed=epoch_seed(setup.params.seed, label, epoch))
        try:
            result = train_epoch(model, loader, optimizer, setup.device, progress=f"{label} epoch {epoch}: ")
        except DivergedError as exc:
            out.status, out.failure = "failed", str(exc)
            log.warning("%s failed: %s", label, exc)
            return out
        y = accuracy(*predict(model, val_loader, setup.device))
        out.curve.append(y)
        out.losses.append(result.loss)
        out.seconds.append(result.seconds)
        decision = stopper.update(y)
        save_epoch_state(work_dir / f"epoch_{epoch:03d}.pt", model=model, optimizer=optimizer,
                         identity=setup.identity, epoch=epoch, curve=out.curve, losses=out.losses,
                         seconds=out.seconds)
        if on_epoch is not None:
            on_epoch(epoch, _epoch_metrics(out, dst, decision))
        knee = f", knee t*={decision.t_star}" if decision.t_star is not None else ", knee: not enough evidence yet"
        log.info("%s epoch %d: loss %.4f, val_acc %.4f, %.1fs%s", label, epoch, result.loss, y,
                 result.seconds, knee)

    return _finish(setup, out, decision, work_dir)


def _epoch_metrics(out: TransitionOutcome, dst: State, decision: KneeDecision | None) -> dict[str, float]:
    """What MLflow gets after each epoch: the curve point, and the knee fit when there is one."""
    metrics = {t.M_VAL_ACC: out.curve[-1], t.M_LR: dst.lr}
    if out.losses and len(out.curve) > 1:
        metrics[t.M_TRAIN_LOSS] = out.losses[-1]
        metrics[t.M_EPOCH_SECONDS] = out.seconds[-1]
    fit = getattr(decision, "fit", None)
    if fit is not None:
        metrics[t.M_KNEE_T] = fit.t_star
        metrics[t.M_KNEE_VALUE] = fit.value
        metrics[t.M_KNEE_RMSE] = fit.rmse
        metrics[t.M_KNEE_R2] = fit.r2
        for i, value in enumerate(fit.params, start=1):
            metrics[t.M_KNEE_PARAM.format(i)] = value
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _finish(setup: TrainSetup, out: TransitionOutcome, decision: KneeDecision, work_dir: Path) -> TransitionOutcome:
    """Keep epoch ``t*``'s weights as ``model.pt``; drop the other epoch states."""
    # The kept epoch: t* (min(t*, t) when stopped by max_epochs; the best observed epoch
    # when no fit ever succeeded). Its fitted value is f at that epoch.
    t_star = decision.chosen_epoch
    fit = decision.fit
    out.t_star = t_star
    out.observed = out.curve[t_star]
    out.fitted = decision.chosen_value if decision.chosen_value is not None else out.observed
    if fit is not None:
        out.fit_params, out.rmse, out.r2 = list(map(float, fit.params)), fit.rmse, fit.r2
    kept = load_epoch_state(work_dir / f"epoch_{t_star:03d}.pt", setup.identity)
    model = setup.new_model(0)
    model.load_state_dict(kept["state_dict"])
    out.checkpoint = work_dir / "model.pt"
    save_model(out.checkpoint, model, setup.identity, chosen_epoch=t_star)
    out.status = "finished"
    return out


def clear_work_dir(work_dir: Path) -> None:
    shutil.rmtree(work_dir, ignore_errors=True)
