"""3D ConvNets by name: DG-P3D and its ablations (paper §4), torchvision baselines.

    model = build_model("dg_p3d_tiny", num_classes=10, width=16)
    logits = model(clips)                      # (N, 3, T, H, W) -> (N, 10)
    set_bn_freeze(model, clip_length=64, threshold=64)
"""

from __future__ import annotations

from opplan.models.base import VideoNet, set_bn_freeze
from opplan.models.flops import count_gflops, count_params
from opplan.models.inflate import inflate_imagenet
from opplan.models.registry import REGISTRY, build_model, build_model_from_params, get_spec, model_names

__all__ = [
    "REGISTRY",
    "VideoNet",
    "build_model",
    "build_model_from_params",
    "count_gflops",
    "count_params",
    "get_spec",
    "inflate_imagenet",
    "model_names",
    "set_bn_freeze",
]
