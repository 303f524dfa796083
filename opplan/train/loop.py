"""One training epoch and the evaluations, independent of what the epoch belongs to."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from opplan import distributed
from opplan.device import uses_cudagraphs
from opplan.progress import Progress
from opplan.train.objective import Objective

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


CHECK_EVERY = 50
"""Batches between two reads of the losses back from a GPU (each read waits for it)."""


@dataclass(frozen=True)
class EpochResult:
    loss: float
    clips: int
    seconds: float


@dataclass(frozen=True)
class LoopOptions:
    """How a pass runs on its device; none of these changes what it computes on CPU."""

    amp: torch.dtype | None = None
    """Autocast dtype (:func:`opplan.device.amp_dtype`); None: full precision."""
    channels_last: bool = False
    """Inputs in channels-last 3D layout, for a model converted to it."""
    progress_seconds: float | None = None
    """Log progress within the pass at most this often (:class:`opplan.progress.Progress`); None: never."""
    check_every: int = CHECK_EVERY
    """With an optimizer that can skip a step on the device (``fused=True``), read losses back
    and check them for divergence every this many batches; otherwise before every step."""


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device, *,
                scaler: torch.amp.GradScaler | None = None, micro_batch: int | None = None, progress: str = "",
                options: LoopOptions = LoopOptions(), objective: Objective = Objective()) -> EpochResult:
    """One pass over ``loader`` of ``(clips (N, 3, T, H, W), labels (N,))``, one optimizer step per batch.

    - ``micro_batch``: a batch larger than this goes through forward/backward in
      ``ceil(N / micro_batch)`` strided parts (part m holds clips m, m + parts, ...) whose
      gradients accumulate before the step; the loss is the batch mean either way.
      BatchNorm's running statistics move once per step, with the first part, as they
      would without accumulation.
    - Distributed (``model`` wrapped by :func:`opplan.distributed.wrap`): DDP averages the
      gradients of the processes' equal shares, and the loss and clip counts are summed
      over processes, so every process sees the same epoch loss and the same divergence.
      DDP keeps rank 0's BatchNorm running statistics, i.e. again those of the step's first
      part: N processes with k parts each train exactly as one process with N * k parts
      (up to floating-point noise and dropout).
    - ``options.amp``: autocast to that dtype, with ``scaler`` scaling the loss (float16).
    - Losses and clip counts stay on the device and are read back every
      ``options.check_every`` batches (no wait for the GPU at every step) when the optimizer
      can skip a step on the device (fused, without a gradient scaler); a batch whose loss
      is not finite is then not applied. Otherwise they are read before every step.
    - ``objective``: the loss terms and gradient clipping (:mod:`opplan.train.objective`).

    Raises :class:`DivergedError` when a batch loss is not finite (on every process
    alike), without applying that batch's step.
    """
    model.train()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    skips = _skips_on_device(optimizer) and not scaler.is_enabled()
    losses = _Losses(progress, options.check_every)
    meter = Progress(f"{progress}training ", _clips_per_pass(loader), _every(options))
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for clip, label in loader:
        clip = _to_device(clip, device, options)
        label = label.to(device, non_blocking=True)
        n = label.numel()
        batch_loss = _forward_backward(model, clip, label, scaler, options.amp, micro_batch, objective)
        stats = distributed.all_reduce_sum(torch.stack([batch_loss, torch.full((), float(n), device=device)]))
        on_device = skips and bool(optimizer.state)  # see _skips_on_device
        losses.add(stats, check=not on_device)
        objective.clip_gradients(optimizer, scaler)
        _optimizer_step(optimizer, scaler, ~torch.isfinite(stats[0]) if on_device else None)
        meter.update(n * distributed.world().size)
    losses.check()
    if losses.clips == 0:
        raise RuntimeError("the training loader yielded no clips")
    return EpochResult(loss=losses.total / losses.clips, clips=losses.clips, seconds=time.perf_counter() - start)


def compute_loss(model: nn.Module, clip: torch.Tensor, label: torch.Tensor,
                 objective: Objective = Objective()) -> torch.Tensor:
    """Summed loss of ``model`` on ``clip`` (N, 3, T, H, W) against ``label`` (N,): the
    cross-entropy terms ``objective`` names (one per head, or of the fused prediction)."""
    return objective.loss(functools.partial(_forward, model), clip, label)


def _forward_backward(model: nn.Module, clip: torch.Tensor, label: torch.Tensor, scaler: torch.amp.GradScaler,
                      amp: torch.dtype | None, micro_batch: int | None, objective: Objective) -> torch.Tensor:
    """Gradients of the batch mean loss accumulated in ``model`` (see :func:`train_epoch`);
    returns the summed loss (a 0-d float32 tensor on the device)."""
    n = label.numel()
    parts = -(-n // micro_batch) if micro_batch else 1
    batch_loss = torch.zeros((), device=label.device)
    for m in range(parts):
        with distributed.no_sync(model, skip=m < parts - 1), _running_stats_kept(model, m > 0):
            with _autocast(label.device, amp):
                loss = compute_loss(model, clip[m::parts], label[m::parts], objective)
            scaler.scale(loss / n).backward()
        batch_loss += loss.detach().float()
    return batch_loss


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    skip: torch.Tensor | None) -> None:
    """Apply the accumulated gradients; ``skip`` (a 0-d bool tensor on the device; fused
    optimizers only, no gradient scaler) skips the step on the device when true, with no
    wait for the GPU. A gradient scaler decides itself, waiting for the GPU."""
    if skip is not None:
        optimizer.found_inf = skip.float()  # type: ignore[attr-defined] - read by fused optimizers' step
    try:
        scaler.step(optimizer)
    finally:
        if skip is not None:
            del optimizer.found_inf
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor (fused optimizers).

    Not on an optimizer's first step: fused SGD (torch 2.14) then creates its momentum
    buffers uninitialised, and a skipped first step leaves them so; the first step is
    checked before it is applied instead. For the same reason a float16 gradient scaler,
    which often skips the first steps, goes with an unfused optimizer
    (``TrainSetup.optimizer``).
    """
    # The groups' flag, not the optimizer's: a state loaded from an unfused optimizer (an
    # epoch state saved on CPU, resumed on a GPU) turns the fused kernel off again.
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups)


class _Losses:
    """Batch losses and clip counts kept on the device, read back every ``every`` batches,
    when asked (before a step that would otherwise be applied unchecked) and at the end."""

    def __init__(self, progress: str, every: int) -> None:
        self.progress, self.every = progress, max(int(every), 1)
        self.pending: list[torch.Tensor] = []
        self.total, self.clips = 0.0, 0

    def add(self, stats: torch.Tensor, *, check: bool) -> None:
        self.pending.append(stats)
        if check or len(self.pending) >= self.every:
            self.check()

    def check(self) -> None:
        """Raise :class:`DivergedError` at the first non-finite batch loss read back."""
        if not self.pending:
            return
        rows = torch.stack(self.pending).tolist()
        self.pending.clear()
        for batch_total, batch_clips in rows:
            if not math.isfinite(batch_total):
                raise DivergedError(f"{self.progress}training loss became {batch_total / batch_clips} "
                                    f"after {self.clips} clips")
            self.total += batch_total
            self.clips += int(batch_clips)


def _forward(model: nn.Module, clip: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``model(clip)``; under CUDA graphs (``train.compile: reduce-overhead``) each call starts
    a new graph step and its output is copied out of the graph's memory, which the next
    replay overwrites (the loss, its backward and the scores all read it later)."""
    if uses_cudagraphs(distributed.unwrap(model)):
        torch.compiler.cudagraph_mark_step_begin()
        return _cloned(model(clip, **kwargs))
    return model(clip, **kwargs)


def _cloned(out: Any) -> Any:
    """A copy of a tensor, or of each tensor of a dict, tuple or list (per-head logits)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, dict):
        return {k: _cloned(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_cloned(v) for v in out)
    return out


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _to_device(clip: torch.Tensor, device: torch.device, options: LoopOptions) -> torch.Tensor:
    layout = torch.channels_last_3d if options.channels_last and clip.dim() == 5 else torch.preserve_format
    return clip.to(device, non_blocking=True, memory_format=layout)


def _clips_per_pass(loader: Iterable) -> int | None:
    """Clips one pass yields over all processes, when the loader knows (a DataLoader)."""
    sampler = getattr(loader, "sampler", None)
    return len(sampler) * distributed.world().size if sampler is not None and hasattr(sampler, "__len__") else None


def _every(options: LoopOptions) -> float | None:
    return options.progress_seconds if distributed.world().is_main else None


@contextlib.contextmanager
def _running_stats_kept(model: nn.Module, keep: bool) -> Iterator[None]:
    """While ``keep``, training-mode BatchNorm normalises by the batch but leaves its running
    statistics (and batch count) as they are."""
    if not keep:  # the common case, once per batch: no walk over the modules
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device, *,
            options: LoopOptions = LoopOptions(), what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Class scores per video and labels.

    Batches are ``(N, 3, T, H, W)`` (one view) or ``(N, V, 3, T, H, W)`` (V views whose
    softmax scores are averaged, the multi-view testing of docs/design.md §5).
    Returns scores ``(num_videos, num_classes)`` and labels ``(num_videos,)``. The scores
    stay on the device until the end (no wait for the GPU per batch).
    """
    model.eval()
    scores, labels = [], []
    meter = Progress(f"{what}evaluating ", _clips_per_pass(loader), _every(options))
    for clip, label in loader:
        clip = _to_device(clip, device, options)
        with _autocast(device, options.amp):
            if clip.dim() == 6:
                n, v = clip.shape[:2]
                views = clip.flatten(0, 1)
                if options.channels_last:
                    views = views.contiguous(memory_format=torch.channels_last_3d)
                probs = _forward(model, views).float().softmax(dim=1).view(n, v, -1).mean(dim=1)
            else:
                probs = _forward(model, clip).float().softmax(dim=1)
        scores.append(probs)
        labels.append(label.numpy())
        meter.update(len(label) * distributed.world().size)
    if not scores:  # a distributed process's share can be empty
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(scores).cpu().numpy(), np.concatenate(labels)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean()) if len(labels) else math.nan


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    predicted = scores.argmax(axis=1)
    per_class = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(per_class))


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, scores.argmax(axis=1)), 1)
    return matrix
