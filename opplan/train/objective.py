"""What one optimizer step minimises and how it steps: the loss terms of the heads, the
optimizer and gradient clipping (docs/fidelity.md).

Kept apart from :mod:`opplan.train.loop`, which runs the steps, so the training recipe
(the authors' ``train_3d.py``: per-head cross-entropies, Nesterov SGD, clipping at 40)
is read in one place.

Every model of the registry returns, with ``heads=True``, logits ``(N, K, C)``: each
head's, then the prediction's (``K = 3`` for a dual head: temporal, spatial, fused;
``K = 1`` for a single head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opplan.config import TrainParams

HEAD_LOSSES = ("fused", "per_head", "per_head+fused")


def head_loss_terms(logits: Tensor, labels: Tensor, head_loss: str) -> dict[str, Tensor]:
    """Summed (not averaged) cross-entropy terms of one batch, by name.

    ``logits``: (N, K, C) from ``model(x, heads=True)``. ``fused``: the prediction's logits;
    ``per_head``: one term per head (``temporal``, ``spatial``); ``per_head+fused``: both.
    A single-head model (K = 1) has the one term ``fused`` whatever ``head_loss`` says.
    """
    if head_loss not in HEAD_LOSSES:
        raise ValueError(f"head_loss must be one of {HEAD_LOSSES}, got {head_loss!r}")
    labels = labels.long()
    if logits.shape[1] == 1:
        return {"fused": F.cross_entropy(logits[:, 0], labels, reduction="sum")}
    terms = {}
    if head_loss != "fused":
        for index, name in enumerate(("temporal", "spatial")):
            terms[name] = F.cross_entropy(logits[:, index], labels, reduction="sum")
    if head_loss != "per_head":
        terms["fused"] = F.cross_entropy(logits[:, -1], labels, reduction="sum")
    return terms


@dataclass(frozen=True)
class Objective:
    """The loss of a batch and the gradient clipping before a step (``train.head_loss``,
    ``train.clip_grad_norm``)."""

    head_loss: str = "fused"
    clip_grad_norm: float | None = None

    @classmethod
    def from_params(cls, train: TrainParams) -> Objective:
        return cls(head_loss=train.head_loss, clip_grad_norm=train.clip_grad_norm)

    def loss(self, model: nn.Module, clip: Tensor, label: Tensor) -> Tensor:
        """Summed loss of ``clip`` (N, 3, T, H, W) through ``model`` (possibly DDP-wrapped).

        ``fused`` needs only the prediction (``model(clip)``, any classifier will do); the
        per-head losses ask the model for every head (``model(clip, heads=True)``)."""
        if self.head_loss == "fused":
            return F.cross_entropy(model(clip), label, reduction="sum")
        return sum(head_loss_terms(model(clip, heads=True), label, self.head_loss).values())

    def clip_gradients(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> Tensor | None:
        """Clip the (unscaled) gradients of ``optimizer``'s parameters to ``clip_grad_norm``;
        returns their norm before clipping, on the device (None without clipping). Call before
        ``scaler.step``."""
        if self.clip_grad_norm is None:
            return None
        scaler.unscale_(optimizer)  # a no-op when the scaler is disabled
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return nn.utils.clip_grad_norm_(params, self.clip_grad_norm)


def fusion_trained(head_loss: str) -> bool:
    """Whether the dual head's fusion weights learn: not under ``per_head``, where they stay at
    the average of the heads (the authors' test-time fusion)."""
    return head_loss != "per_head"


def make_optimizer(model: nn.Module, lr: float, train: TrainParams, *, fused: bool | None = None) -> torch.optim.SGD:
    """SGD over ``model``'s trainable parameters (momentum, Nesterov, weight decay from
    ``train``); a dual head's fusion weights in their own group without weight decay.
    ``fused``: torch's fused SGD kernel (CUDA), which can skip a step on the device.

    Also decides whether the fusion weights train (``train.head_loss``): set here, before
    the model is wrapped by DDP, which only syncs parameters that need a gradient.
    """
    fusion = getattr(model, "fusion", None)
    if isinstance(fusion, nn.Parameter):
        fusion.requires_grad_(fusion_trained(train.head_loss))
    decayed = [p for p in model.parameters() if p.requires_grad and p is not fusion]
    groups: list[dict] = [{"params": decayed}]
    if isinstance(fusion, nn.Parameter) and fusion.requires_grad:
        groups.append({"params": [fusion], "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay,
                           nesterov=train.nesterov, fused=fused)
