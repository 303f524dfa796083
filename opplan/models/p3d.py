"""DG-P3D, G-P3D, P3D and the I3D-style inflated ResNet (paper §4, Figure 3).

One body, four switches (factories that differ only in data are one factory):
``kinds`` (mixed P3D "ABC", or "I" for I3D), ``global_context``, ``dual_head`` and
the ResNet layout (``depth``, ``width``).

Shapes for a 16x224² clip and the ResNet-50 layout (as in Figure 3):
stem (temporal stride ``early_stride`` = 4, as in the authors' code) 64x4x56²;
res2..res4 256x4x56², 512x4x28², 1024x4x14²; then the dual head:

- temporal head: res5 with spatial stride 2 -> 2048x4x7² (keeps the time axis);
- spatial head: temporal max-pool by 4, res5 with stride 1 -> 2048x1x14²
  (keeps the spatial resolution);

each globally average-pooled, dropped out and classified; the two logits are fused
as ``w_t * temporal + w_s * spatial`` with ``w`` initially 0.5 each (the authors'
test-time average), learnt or kept at 0.5 depending on ``train.head_loss``. Pooling is adaptive, so any clip of at least
``early_stride`` frames and any size >= 32 works.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opplan.models.base import VideoNet
from opplan.models.blocks import KINDS, BasicBlock, Bottleneck, Kind

# depth -> (block, blocks per stage); 10/18 use basic blocks, as ResNet does.
LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    14: (Bottleneck, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    26: (Bottleneck, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


@dataclass(frozen=True)
class P3DConfig:
    """Architecture of a P3D-family network (a registry entry is one of these)."""

    depth: int = 50
    width: int = 64
    """Channels of the stem; stage i has ``width * 2**i`` planes (ResNet: 64)."""
    kinds: tuple[Kind, ...] = KINDS
    """Block kinds, cycled over all blocks of the network: mixed P3D interleaves A, B, C."""
    global_context: bool = True
    dual_head: bool = True
    early_stride: int = 4
    """Temporal kernel and stride of the stem (authors' code: 4)."""
    spatial_head_pool: int = 4
    """Temporal max-pool factor in front of the spatial head (authors' ``maxpool_dual``)."""
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.depth not in LAYOUTS:
            raise ValueError(f"depth must be one of {sorted(LAYOUTS)}, got {self.depth}")

    @property
    def block(self) -> type[nn.Module]:
        return LAYOUTS[self.depth][0]

    @property
    def layers(self) -> tuple[int, int, int, int]:
        return LAYOUTS[self.depth][1]


class Head(nn.Module):
    """(N, C, T, H, W) -> pooled (N, C) -> dropout -> logits (N, num_classes)."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def pool(x: Tensor) -> Tensor:
        return F.adaptive_avg_pool3d(x, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(x)))


class P3DResNet(VideoNet):
    """A ResNet body made 3D with P3D (or I3D) blocks, with a single or a dual head."""

    def __init__(self, num_classes: int, cfg: P3DConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv3d(3, w, (cfg.early_stride, 7, 7), stride=(cfg.early_stride, 2, 2),
                           padding=(0, 3, 3), bias=False),
            bn=nn.BatchNorm3d(w),
            relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        ))
        e, n = cfg.block.expansion, cfg.layers
        self.layer1 = self._make_layer(w, w, n[0], stride=1, first=0)
        self.layer2 = self._make_layer(w * e, 2 * w, n[1], stride=2, first=sum(n[:1]))
        self.layer3 = self._make_layer(2 * w * e, 4 * w, n[2], stride=2, first=sum(n[:2]))
        self.layer4 = self._make_layer(4 * w * e, 8 * w, n[3], stride=2, first=sum(n[:3]))
        c_out = 8 * w * e
        self.head = Head(c_out, num_classes, cfg.dropout)
        self.layer4_spatial: nn.Sequential | None = None
        self.head_spatial: Head | None = None
        self.fusion: nn.Parameter | None = None
        if cfg.dual_head:
            # Same blocks (same P3D kinds) as res5, without its spatial stride.
            self.layer4_spatial = self._make_layer(4 * w * e, 8 * w, n[3], stride=1, first=sum(n[:3]))
            self.head_spatial = Head(c_out, num_classes, cfg.dropout)
            self.fusion = nn.Parameter(torch.full((2,), 0.5))
        self.num_features = c_out
        self._init_weights()

    def _make_layer(self, c_in: int, planes: int, blocks: int, *, stride: int, first: int) -> nn.Sequential:
        """One stage; ``first`` is the network-wide index of its first block (kinds cycle over all blocks)."""
        cfg, layers = self.cfg, []
        for i in range(blocks):
            kind = cfg.kinds[(first + i) % len(cfg.kinds)]
            layers.append(cfg.block(kind, c_in, planes, stride if i == 0 else 1, global_context=cfg.global_context))
            c_in = planes * cfg.block.expansion
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def trunk(self, x: Tensor) -> Tensor:
        """(N, 3, T, H, W) -> res4 features (N, 4*width*e, T/s, H/16, W/16)."""
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def _spatial_branch(self, x: Tensor) -> Tensor:
        k = min(self.cfg.spatial_head_pool, int(x.shape[2]))  # a constant when traced for export
        x = F.max_pool3d(x, (k, 1, 1), stride=(k, 1, 1), ceil_mode=True)
        return self.layer4_spatial(x)

    def forward(self, x: Tensor, heads: bool = False) -> Tensor:
        """(N, 3, T, H, W) -> the prediction's logits (N, num_classes): the fused logits of a
        dual head, the head's own otherwise.

        ``heads=True`` -> (N, K, num_classes), every head's logits then the prediction's:
        K = 3 (temporal, spatial, fused) with a dual head, K = 1 otherwise (see
        :mod:`opplan.train.objective`). One fresh tensor either way, no dict of views, so
        the output suits ``torch.compile``'s CUDA graphs.
        """
        feat = self.trunk(x)
        temporal = self.head(self.layer4(feat))
        if self.fusion is None:
            return temporal.unsqueeze(1) if heads else temporal
        spatial = self.head_spatial(self._spatial_branch(feat))
        fused = self.fusion[0] * temporal + self.fusion[1] * spatial
        return torch.stack((temporal, spatial, fused), dim=1) if heads else fused

    def pooled_features(self, x: Tensor) -> dict[str, Tensor]:
        """Globally pooled res5 features (N, C) per head, before dropout (``temporal``[, ``spatial``])."""
        feat = self.trunk(x)
        out = {"temporal": Head.pool(self.layer4(feat))}
        if self.layer4_spatial is not None:
            out["spatial"] = Head.pool(self._spatial_branch(feat))
        return out


def min_clip_length(model: nn.Module) -> int:
    """The shortest clip the model accepts (the stem's temporal kernel)."""
    cfg = getattr(model, "cfg", None)
    return cfg.early_stride if isinstance(cfg, P3DConfig) else 1


def describe(cfg: P3DConfig) -> str:
    """A one-line summary of an architecture, e.g. for error messages."""
    prefix = ("D" if cfg.dual_head else "") + ("G" if cfg.global_context else "")
    name = "I3D" if cfg.kinds == ("I",) else f"{prefix}-P3D" if prefix else "P3D"
    blocks = "bottleneck" if cfg.block is Bottleneck else "basic"
    return f"{name} depth {cfg.depth} ({blocks} blocks {list(cfg.layers)}), width {cfg.width}"
