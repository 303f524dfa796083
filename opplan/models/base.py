"""The common base of every registered model and BatchNorm freezing for long clips.

docs/design.md §7: for clips of ``bn_freeze_min_length`` frames and more (paper: 64), every
BatchNorm layer but the first is frozen: it normalises with its running statistics
(eval mode) and its affine parameters get no gradient. Long clips force small
batches, whose batch statistics are too noisy to train BN with (the authors' code
does the same with ``frozen_bn``, sparing the stem's BN).

Design: the frozen flag lives on each BN module (``opplan_frozen``) and
:class:`VideoNet` re-applies it in :meth:`VideoNet.train`, so it survives every
``model.train()`` call, also through wrappers (DDP, ``torch.compile``) that recurse
into their children's ``train``. Nothing is swapped, so checkpoints keep their keys.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from opplan.errors import OpplanError

log = logging.getLogger(__name__)

FROZEN_ATTR = "opplan_frozen"


class VideoNet(nn.Module):
    """Base of the registry's models: forward (N, 3, T, H, W) -> logits (N, num_classes).

    Keeps BatchNorm layers marked by :func:`set_bn_freeze` in eval mode and their
    affine parameters out of training, whatever ``train()`` is called with.
    """

    def forward(self, x: Tensor, heads: bool = False) -> Tensor:
        """Logits (N, num_classes); ``heads=True``: (N, K, num_classes), each head's logits
        and last the prediction's (K = 1 for a single head)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> VideoNet:
        super().train(mode)
        for bn in frozen_bn_layers(self):
            bn.eval()
            for p in bn.parameters():
                p.requires_grad_(False)
        return self


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """All BatchNorm layers of ``model`` in registration order (the stem's first)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def frozen_bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in bn_layers(model) if getattr(m, FROZEN_ATTR, False)]


def set_bn_freeze(model: nn.Module, clip_length: int, threshold: int) -> bool:
    """Freeze every BN but the first when ``clip_length >= threshold``, else unfreeze all.

    Returns whether BN layers are now frozen. ``model`` must be (or contain) a
    :class:`VideoNet`, which keeps the freeze across ``train()`` calls.
    """
    if not any(isinstance(m, VideoNet) for m in model.modules()):
        raise OpplanError(
            f"set_bn_freeze needs a model from opplan.models.build_model, got {type(model).__name__}"
        )
    freeze = clip_length >= threshold
    layers = bn_layers(model)
    for i, bn in enumerate(layers):
        frozen = freeze and i > 0
        setattr(bn, FROZEN_ATTR, frozen)
        # Frozen: running statistics, no gradient. Unfrozen: follow the model's mode.
        bn.train(model.training and not frozen)
        for p in bn.parameters():
            p.requires_grad_(not frozen)
    log.debug("clip length %d, threshold %d: %d of %d BN layers frozen",
              clip_length, threshold, len(layers) - 1 if freeze and layers else 0, len(layers))
    return freeze
