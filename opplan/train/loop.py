"""One training epoch and the evaluations, independent of what the epoch belongs to."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochResult:
    loss: float
    clips: int
    seconds: float


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                device: torch.device, *, progress: str = "") -> EpochResult:
    """One pass over ``loader`` of ``(clips (N, 3, T, H, W), labels (N,))``.

    Raises :class:`DivergedError` as soon as a batch loss is not finite.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    start = time.perf_counter()
    total, clips = 0.0, 0
    for clip, label in loader:
        clip = clip.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        loss = criterion(model(clip), label)
        if not torch.isfinite(loss):
            raise DivergedError(f"{progress}training loss became {loss.item()} after {clips} clips")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * label.numel()
        clips += label.numel()
    if clips == 0:
        raise RuntimeError("the training loader yielded no clips")
    return EpochResult(loss=total / clips, clips=clips, seconds=time.perf_counter() - start)


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
