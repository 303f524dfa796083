"""torchvision's video ResNets (R3D-18, MC3-18, R(2+1)D-18) behind the registry's interface.

Built with ``weights=None`` (nothing is downloaded); the classifier becomes
dropout -> Linear(512, num_classes), as in our own heads.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torchvision.models import video

from opplan.models.base import VideoNet

FACTORIES: dict[str, Callable[..., video.VideoResNet]] = {
    "r3d_18": video.r3d_18,
    "mc3_18": video.mc3_18,
    "r2plus1d_18": video.r2plus1d_18,
}


class TorchvisionVideo(VideoNet):
    """A torchvision ``VideoResNet``: (N, 3, T, H, W) -> logits (N, num_classes)."""

    def __init__(self, arch: str, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.arch = arch
        self.net = FACTORIES[arch](weights=None)
        in_features = self.net.fc.in_features
        fc = nn.Linear(in_features, num_classes)
        nn.init.normal_(fc.weight, 0.0, 0.01)  # torchvision's own init of fc
        nn.init.zeros_(fc.bias)
        self.net.fc = nn.Sequential(nn.Dropout(dropout), fc)
        self.num_features = in_features

    def forward(self, x: Tensor, heads: bool = False) -> Tensor:
        logits = self.net(x)
        return logits.unsqueeze(1) if heads else logits
