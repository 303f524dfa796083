"""One training epoch and the evaluations, independent of what the epoch belongs to."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from opplan import distributed
from opplan.train.objective import Objective

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochResult:
    loss: float
    clips: int
    seconds: float


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device, *,
                scaler: torch.amp.GradScaler | None = None, amp: bool = False, micro_batch: int | None = None,
                progress: str = "", objective: Objective = Objective()) -> EpochResult:
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
    - ``amp``: float16 autocast on CUDA, with ``scaler`` scaling the loss.
    - ``objective``: the loss terms and gradient clipping (:mod:`opplan.train.objective`).

    Raises :class:`DivergedError` when a batch loss is not finite (on every process
    alike), before that batch's step.
    """
    model.train()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    start = time.perf_counter()
    total, clips = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    for clip, label in loader:
        clip = clip.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        n = label.numel()
        parts = -(-n // micro_batch) if micro_batch else 1
        batch_loss = torch.zeros((), device=device)
        for m in range(parts):
            with distributed.no_sync(model, skip=m < parts - 1), _running_stats_kept(model, m > 0):
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss = objective.loss(model, clip[m::parts], label[m::parts])
                scaler.scale(loss / n).backward()
            batch_loss += loss.detach().float()
        summed = distributed.all_reduce_sum(torch.stack([batch_loss, torch.tensor(float(n), device=device)]))
        batch_total, batch_clips = summed.tolist()
        if not math.isfinite(batch_total):
            raise DivergedError(f"{progress}training loss became {batch_total / batch_clips} after {clips} clips")
        objective.clip_gradients(optimizer, scaler)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        total += batch_total
        clips += int(batch_clips)
    if clips == 0:
        raise RuntimeError("the training loader yielded no clips")
    return EpochResult(loss=total / clips, clips=clips, seconds=time.perf_counter() - start)


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
def predict(model: nn.Module, loader: Iterable, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Class scores per video and labels.

    Batches are ``(N, 3, T, H, W)`` (one view) or ``(N, V, 3, T, H, W)`` (V views whose
    softmax scores are averaged, the multi-view testing of SPEC §5).
    Returns scores ``(num_videos, num_classes)`` and labels ``(num_videos,)``.
    """
    model.eval()
    scores, labels = [], []
    for clip, label in loader:
        clip = clip.to(device, non_blocking=True)
        if clip.dim() == 6:
            n, v = clip.shape[:2]
            probs = model(clip.flatten(0, 1)).softmax(dim=1).view(n, v, -1).mean(dim=1)
        else:
            probs = model(clip).softmax(dim=1)
        scores.append(probs.float().cpu().numpy())
        labels.append(label.numpy())
    if not scores:  # a distributed process's share can be empty
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(scores), np.concatenate(labels)


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
