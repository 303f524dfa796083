"""Parameter and compute counts.

``count_gflops`` counts multiply-adds (MACs) of one clip through every convolution
and linear layer, with forward hooks; BatchNorm, pooling, activations and the
global-context pooling are left out (< 1 % of the total). This is the convention
of torchvision's published "GFLOPS" (``Weights.meta["_ops"]``), which
``tests/test_flops.py`` checks against for its video models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (frozen ones too unless ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(module: _ConvNd, out: Tensor) -> int:
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return out.numel() * per_output


def _linear_macs(module: nn.Linear, out: Tensor) -> int:
    return out.numel() * module.in_features


def count_gflops(model: nn.Module, clip_length: int, size: int, *, channels: int = 3) -> float:
    """Giga multiply-adds for one clip (1, channels, clip_length, size, size), in eval mode."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += _conv_macs(module, out) if isinstance(module, _ConvNd) else _linear_macs(module, out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, channels, clip_length, size, size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total / 1e9
