"""Pseudo-3D residual blocks and the global-context transform (paper §4, Figure 3).

A P3D block replaces the 3x3 convolution of a ResNet block by a 2D spatial 1x3x3
convolution ``S`` and a 1D temporal 3x1x1 convolution ``T`` (Qiu et al., ICCV 2017):

- P3D-A: ``S`` then ``T`` in series;
- P3D-B: ``S`` and ``T`` in parallel on the same input, summed;
- P3D-C: ``S`` then ``T``, with a shortcut from ``S``'s output around ``T``: as in the
  authors' code, ``T`` and the shortcut both take the activated ``relu(S)``, so the unit
  is ``relu(S) + T(relu(S))`` (before the block's final ReLU); in the second unit of a
  basic block, whose output meets the residual before any ReLU, both take ``S`` itself;
- ``I`` (for I3D): one full 3x3x3 convolution, the inflated baseline.

Mixed P3D interleaves A, B, C block by block over the whole network.

Each variant is written so that zero-initialising ``T`` (B, C) or giving it the
identity kernel (A) turns the block into the 2D ResNet block it was inflated from;
:mod:`opplan.models.inflate` relies on that.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Kind = Literal["A", "B", "C", "I"]
KINDS: tuple[Kind, ...] = ("A", "B", "C")


def conv_s(c_in: int, c_out: int, stride: int = 1) -> nn.Conv3d:
    """2D spatial 1x3x3 convolution (spatial stride only)."""
    return nn.Conv3d(c_in, c_out, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)


def conv_t(c_in: int, c_out: int, spatial_stride: int = 1) -> nn.Conv3d:
    """1D temporal 3x1x1 convolution (a spatial stride only where it runs on the block input)."""
    return nn.Conv3d(
        c_in, c_out, (3, 1, 1), stride=(1, spatial_stride, spatial_stride), padding=(1, 0, 0), bias=False
    )


def conv1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv3d:
    """Point-wise 1x1x1 convolution (spatial stride only, for shortcuts)."""
    return nn.Conv3d(c_in, c_out, 1, stride=(1, stride, stride), bias=False)


class P3DUnit(nn.Module):
    """The spatio-temporal convolution of a block: (N, C_in, T, H, W) -> (N, C_out, T, H/s, W/s).

    Returns the BatchNorm-ed *pre-activation*; the caller applies the ReLU (or adds
    the residual first, in the second unit of a basic block). ``activated``: the caller
    applies a ReLU to the output (every unit but a basic block's second), so P3D-C may
    activate ``S`` before ``T`` and its shortcut (``relu(relu(S) + T(relu(S)))`` overall,
    the authors' ``Bottleneck_C``).
    """

    def __init__(self, kind: Kind, c_in: int, c_out: int, stride: int = 1, *, activated: bool = True) -> None:
        super().__init__()
        self.activated = activated
        if kind not in ("A", "B", "C", "I"):
            raise ValueError(f"block kind must be A, B, C or I, got {kind!r}")
        self.kind = kind
        if kind == "I":
            self.conv_s = nn.Conv3d(c_in, c_out, 3, stride=(1, stride, stride), padding=1, bias=False)
            self.conv_t = None
        elif kind == "B":  # T runs on the block input, so it needs S's spatial stride
            self.conv_s = conv_s(c_in, c_out, stride)
            self.conv_t = conv_t(c_in, c_out, spatial_stride=stride)
        else:
            self.conv_s = conv_s(c_in, c_out, stride)
            self.conv_t = conv_t(c_out, c_out)
        self.bn = nn.BatchNorm3d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "A":
            return self.bn(self.conv_t(self.conv_s(x)))
        if self.kind == "B":
            return self.bn(self.conv_s(x) + self.conv_t(x))
        if self.kind == "C":
            s = self.bn(self.conv_s(x))
            if self.activated:
                s = torch.relu(s)
            return s + self.conv_t(s)
        return self.bn(self.conv_s(x))


class GlobalContext(nn.Module):
    """Global residual from the pooled map, broadcast to every position (paper §4).

    (N, C, T, H, W) -> (N, C, 1, 1, 1): global average pool, 1x1 reduce, ReLU, 1x1
    expand (on pooled vectors a 1x1x1 convolution is a Linear layer), as the authors'
    ``fc1``/``fc2``: no LayerNorm (GCNet, Cao et al. 2019, has one; the authors do not).
    The expand layer starts at zero, weight and bias (the authors zero the weight only), so
    a fresh or inflated network is exactly undisturbed by it. ``min_hidden`` keeps the
    narrow CPU models' first stages from a 4-unit bottleneck; it never binds at width 64.
    See docs/fidelity.md.
    """

    def __init__(self, channels: int, ratio: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = min(channels, max(channels // ratio, min_hidden))
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, x: Tensor) -> Tensor:
        g = x.mean(dim=(2, 3, 4))
        g = self.expand(torch.relu(self.reduce(g)))
        return g[:, :, None, None, None]


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(conv1(c_in, c_out, stride), nn.BatchNorm3d(c_out))


class Bottleneck(nn.Module):
    """1x1x1 reduce -> P3D unit -> 1x1x1 expand (x4), plus optional global context."""

    expansion = 4

    def __init__(self, kind: Kind, c_in: int, planes: int, stride: int = 1, *, global_context: bool) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = conv1(c_in, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.unit = P3DUnit(kind, planes, planes, stride)
        self.conv3 = conv1(planes, c_out)
        self.bn3 = nn.BatchNorm3d(c_out)
        self.gc = GlobalContext(c_out) if global_context else None
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.unit(out))
        out = self.bn3(self.conv3(out))
        if self.gc is not None:  # as in the authors' code: from the residual branch, before the sum
            out = out + self.gc(out)
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class BasicBlock(nn.Module):
    """Two P3D units (the shallow ResNet-10/18 layout), plus optional global context."""

    expansion = 1

    def __init__(self, kind: Kind, c_in: int, planes: int, stride: int = 1, *, global_context: bool) -> None:
        super().__init__()
        self.unit1 = P3DUnit(kind, c_in, planes, stride)
        self.unit2 = P3DUnit(kind, planes, planes, activated=False)
        self.gc = GlobalContext(planes) if global_context else None
        self.downsample = _shortcut(c_in, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.unit2(torch.relu(self.unit1(x)))
        if self.gc is not None:
            out = out + self.gc(out)
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)
