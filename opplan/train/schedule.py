"""Training along a fixed, epoch-by-epoch schedule: the final retrain along the planned
path (SPEC §5) and every hand-tuned baseline (SPEC §6) run through here.

Like a transition, every completed epoch is saved as an epoch state, so a killed run
resumes from its last completed epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opplan import tracking as t
from opplan.models import set_bn_freeze
from opplan.planning.graph import State
from opplan.train.checkpoint import load_epoch_state, save_epoch_state, save_model, set_rng_state
from opplan.train.loop import DivergedError, train_epoch
from opplan.train.setup import TrainSetup
from opplan.train.transition import epoch_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduledEpoch:
    """One epoch of a schedule: its state and learning rate. The optimizer (momentum) is
    reset when ``segment`` changes, as a new transition starts a new optimizer."""

    state: State
    lr: float
    segment: int


@dataclass
class ScheduleOutcome:
    status: str
    losses: list[float]
    seconds: list[float]
    checkpoint: Path | None
    failure: str | None = None


def train_schedule(setup: TrainSetup, schedule: Sequence[ScheduledEpoch], work_dir: Path, *,
                   on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                   label: str = "") -> ScheduleOutcome:
    """Train from S0 through ``schedule``; returns the last epoch's weights as ``model.pt``
    (S0's own weights for an empty schedule)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    model = setup.new_model(schedule[0].state.clip_length if schedule else 0)
    optimizer = setup.optimizer(model, schedule[0].lr if schedule else 0.0)
    losses: list[float] = []
    seconds: list[float] = []
    states = sorted(work_dir.glob("epoch_*.pt"))
    if states:
        saved = load_epoch_state(states[-1], setup.identity)
        losses, seconds = saved["losses"], saved["seconds"]
        last = schedule[len(losses) - 1]
        # The saved optimizer belongs to the last epoch's segment: its BN freeze decides which
        # parameters the optimizer holds, so rebuild both as they were then.
        set_bn_freeze(model, last.state.clip_length, setup.params.model.bn_freeze_min_length)
        optimizer = setup.optimizer(model, last.lr)
        model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        log.info("%s resuming after epoch %d of %d", label, len(losses), len(schedule))
        if on_epoch is not None:  # the last epoch may not have reached MLflow
            on_epoch(len(losses), _epoch_metrics(last, losses[-1], seconds[-1]))
    for index in range(len(losses), len(schedule)):
        step = schedule[index]
        if index > 0 and step.segment != schedule[index - 1].segment:
            set_bn_freeze(model, step.state.clip_length, setup.params.model.bn_freeze_min_length)
            optimizer = setup.optimizer(model, step.lr)
        for group in optimizer.param_groups:
            group["lr"] = step.lr
        loader = setup.loader("train", step.state, mode="train", seed=epoch_seed(setup.params.seed, label, index + 1))
        try:
            result = train_epoch(model, loader, optimizer, setup.device, progress=f"{label} epoch {index + 1}: ")
        except DivergedError as exc:
            log.warning("%s failed: %s", label, exc)
            return ScheduleOutcome("failed", losses, seconds, None, str(exc))
        losses.append(result.loss)
        seconds.append(result.seconds)
        save_epoch_state(work_dir / f"epoch_{index + 1:03d}.pt", model=model, optimizer=optimizer,
                         identity=setup.identity, epoch=index + 1, curve=[], losses=losses, seconds=seconds)
        if on_epoch is not None:
            on_epoch(index + 1, _epoch_metrics(step, result.loss, result.seconds))
        log.info("%s epoch %d/%d (%s, lr %g): loss %.4f, %.1fs", label, index + 1, len(schedule),
                 step.state.name, step.lr, result.loss, result.seconds)
    checkpoint = work_dir / "model.pt"
    save_model(checkpoint, model, setup.identity, epochs=len(schedule))
    return ScheduleOutcome("finished", losses, seconds, checkpoint)


def _epoch_metrics(step: ScheduledEpoch, loss: float, seconds: float) -> dict[str, float]:
    return {t.M_TRAIN_LOSS: loss, t.M_LR: step.lr, t.M_CLIP_LENGTH: step.state.clip_length,
            t.M_SAMPLING_US: float(step.state.sampling == "us"), t.M_EPOCH_SECONDS: seconds}
