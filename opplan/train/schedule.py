"""Training along a fixed, epoch-by-epoch schedule: the final retrain along the planned
path (docs/design.md §5) and every hand-tuned baseline (docs/design.md §6) run through here.

Like a transition, every completed epoch is saved as an epoch state, so a killed run
resumes from its last completed epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opplan import distributed
from opplan import names as n
from opplan.models import set_bn_freeze
from opplan.planning.graph import State
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


@distributed.collective
def train_schedule(setup: TrainSetup, schedule: Sequence[ScheduledEpoch], work_dir: Path, *,
                   on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                   label: str = "") -> ScheduleOutcome:
    """Train from S0 through ``schedule``; returns the last epoch's weights as ``model.pt``
    (S0's own weights for an empty schedule).

    Collective (see :mod:`opplan.distributed`): under ``torchrun`` every process trains;
    rank 0 alone reads and writes the work folder and calls ``on_epoch``.
    """
    world = distributed.world()
    bn_threshold = setup.params.model.bn_freeze_min_length
    model = setup.new_model(schedule[0].state.clip_length if schedule else 0)
    optimizer = setup.optimizer(model, schedule[0].lr if schedule else 0.0)
    scaler = setup.grad_scaler()
    start = distributed.on_main(lambda: _restore(setup, schedule, work_dir, model, scaler, label, on_epoch))
    losses, seconds = start["losses"], start["seconds"]
    if losses:
        # The saved optimizer belongs to the last epoch's segment: its BN freeze decides which
        # parameters the optimizer holds, so rebuild both as they were then.
        last = schedule[len(losses) - 1]
        set_bn_freeze(model, last.state.clip_length, bn_threshold)
        optimizer = setup.optimizer(model, last.lr)
        optimizer.load_state_dict(start["optimizer"])
        if not world.is_main:
            scaler.load_state_dict(start["scaler"])
    net = distributed.wrap(model, setup.device)  # every process now holds rank 0's weights
    for index in range(len(losses), len(schedule)):
        step = schedule[index]
        if index > 0 and step.segment != schedule[index - 1].segment:
            set_bn_freeze(model, step.state.clip_length, bn_threshold)
            optimizer = setup.optimizer(model, step.lr)
            net = distributed.wrap(model, setup.device)  # the trainable parameters changed
        for group in optimizer.param_groups:
            group["lr"] = setup.params.train.lr_for(step.state.clip_length, step.lr)
        seed = epoch_seed(setup.params.seed, label, index + 1)
        if world.enabled:  # dropout differs per process, yet is the same on every rerun
            torch.manual_seed(epoch_seed(seed, world.rank))
        try:
            result = setup.train_epoch(net, step.state, optimizer, scaler, seed=seed,
                                       progress=f"{label} epoch {index + 1}: ")
        except DivergedError as exc:  # raised on every process alike
            log.warning("%s failed: %s", label, exc)
            return ScheduleOutcome(n.STATUS_FAILED, losses, seconds, None, str(exc))
        losses.append(result.loss)
        seconds.append(result.seconds)

        def record() -> None:
            save_epoch_state(epoch_state_path(work_dir, index + 1), model=model, optimizer=optimizer, scaler=scaler,
                             identity=setup.identity, epoch=index + 1, curve=[], losses=losses, seconds=seconds)
            if on_epoch is not None:
                on_epoch(index + 1, _epoch_metrics(step, result.loss, result.seconds))
            log.info("%s epoch %d/%d (%s, lr %g): loss %.4f, %.1fs", label, index + 1, len(schedule),
                     step.state.name, step.lr, result.loss, result.seconds)

        distributed.on_main(record)

    def finish() -> Path:
        checkpoint = work_dir / MODEL_FILE
        save_model(checkpoint, model, setup.identity, epochs=len(schedule))
        return checkpoint

    return ScheduleOutcome(n.STATUS_FINISHED, losses, seconds, distributed.on_main(finish))


def _restore(setup: TrainSetup, schedule: Sequence[ScheduledEpoch], work_dir: Path, model: torch.nn.Module,
             scaler: torch.amp.GradScaler, label: str,
             on_epoch: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any]:
    """Rank 0: load the last epoch state, if any, into ``model`` and ``scaler``; returns what
    the caller (and the other processes) need to continue."""
    work_dir.mkdir(parents=True, exist_ok=True)
    latest = latest_epoch_state(work_dir)
    if latest is None:
        return {"losses": [], "seconds": [], "optimizer": None, "scaler": None}
    saved = load_epoch_state(latest, setup.identity)
    losses, seconds = saved["losses"], saved["seconds"]
    last = schedule[len(losses) - 1]
    set_bn_freeze(model, last.state.clip_length, setup.params.model.bn_freeze_min_length)
    model.load_state_dict(saved["state_dict"])
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    log.info("%s resuming after epoch %d of %d", label, len(losses), len(schedule))
    if on_epoch is not None:  # the last epoch may not have reached MLflow
        on_epoch(len(losses), _epoch_metrics(last, losses[-1], seconds[-1]))
    return {"losses": losses, "seconds": seconds, "optimizer": saved["optimizer"], "scaler": scaler.state_dict()}


def _epoch_metrics(step: ScheduledEpoch, loss: float, seconds: float) -> dict[str, float]:
    return {n.M_TRAIN_LOSS: loss, n.M_LR: step.lr, n.M_CLIP_LENGTH: step.state.clip_length,
            n.M_SAMPLING_US: float(step.state.sampling == "us"), n.M_EPOCH_SECONDS: seconds}
