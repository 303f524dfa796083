"""Models by name: ``build_model(name, num_classes, **params)``.

A registry entry is data (factories that differ only in data are one factory): a P3D-family
:class:`~opplan.models.p3d.P3DConfig` or a torchvision architecture name, plus the
parameters its name fixes (``dg_p3d_r50`` fixes the depth; torchvision's models fix
width and depth).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from opplan.config import ModelParams
from opplan.errors import OpplanError
from opplan.models.base import VideoNet
from opplan.models.p3d import LAYOUTS, P3DConfig, P3DResNet

log = logging.getLogger(__name__)

TINY_WIDTH = 16
TINY_DEPTH = 14
TINY_EARLY_STRIDE = 1
"""The CPU demo's body (measured in bench/models.py): a stem of 16 channels, one
bottleneck block per stage, and no temporal stride in the stem: the demo's clips are
the paper's divided by 4 (4/8/16 vs 16/32/64 frames), so dropping the authors' stem
stride of 4 leaves the body the same number of time steps as the paper's."""

PARAMS = ("dropout", "width", "depth", "early_stride")
"""Keyword parameters ``build_model`` accepts (None means the model's own)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    config: P3DConfig | None = None
    """The architecture of a P3D-family model; None for a torchvision one."""
    fixed: tuple[str, ...] = ()
    """Parameters the name fixes (they may only be given with the model's own value)."""

    def defaults(self) -> dict[str, object]:
        if self.config is None:
            return {"width": 64, "depth": 18, "early_stride": 1}
        return {k: getattr(self.config, k) for k in ("width", "depth", "early_stride")}


def _p3d(name: str, description: str, *, depth: int, width: int = 64, gc: bool = True, dual: bool = True,
         kinds: tuple[str, ...] = ("A", "B", "C"), early_stride: int = 4,
         fixed: tuple[str, ...] = ("depth",)) -> ModelSpec:
    cfg = P3DConfig(depth=depth, width=width, global_context=gc, dual_head=dual, kinds=kinds,
                    early_stride=early_stride)
    return ModelSpec(name, description, cfg, fixed)


_TV_FIXED = ("width", "depth", "early_stride")
_SPECS = [
    _p3d("dg_p3d_r50", "DG-P3D ResNet-50: mixed P3D + global context + dual head (paper §4)", depth=50),
    _p3d("dg_p3d_r101", "DG-P3D ResNet-101", depth=101),
    _p3d("g_p3d_r50", "G-P3D ResNet-50: mixed P3D + global context, single head (ablation)", depth=50, dual=False),
    _p3d("g_p3d_r101", "G-P3D ResNet-101", depth=101, dual=False),
    _p3d("p3d_r50", "P3D ResNet-50: mixed P3D only (Qiu et al. 2017)", depth=50, gc=False, dual=False),
    _p3d("p3d_r101", "P3D ResNet-101", depth=101, gc=False, dual=False),
    _p3d("i3d_r50", "I3D ResNet-50: 3x3x3 inflated bottlenecks, single head", depth=50, gc=False, dual=False,
         kinds=("I",)),
    *[
        _p3d(f"{prefix}p3d_tiny", f"{label}, narrow and shallow for CPU (width {TINY_WIDTH}, depth {TINY_DEPTH})",
             depth=TINY_DEPTH, width=TINY_WIDTH, gc=gc, dual=dual, early_stride=TINY_EARLY_STRIDE, fixed=())
        for prefix, label, gc, dual in [("dg_", "DG-P3D", True, True), ("g_", "G-P3D", True, False),
                                        ("", "P3D", False, False)]
    ],
    ModelSpec("r3d_18", "torchvision R3D-18 (3x3x3 convolutions), no pre-training", fixed=_TV_FIXED),
    ModelSpec("mc3_18", "torchvision MC3-18 (3D in res2, 2D above), no pre-training", fixed=_TV_FIXED),
    ModelSpec("r2plus1d_18", "torchvision R(2+1)D-18, no pre-training", fixed=_TV_FIXED),
]
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def model_names() -> list[str]:
    """The registered model names, in registry order."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise OpplanError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}") from None


def _resolve(spec: ModelSpec, params: dict[str, object]) -> dict[str, object]:
    """Validate ``params`` against ``spec``; drop the Nones (the model's own value)."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise OpplanError(f"model {spec.name!r}: unknown parameter(s) {unknown}; allowed: {list(PARAMS)}")
    given = {k: v for k, v in params.items() if v is not None}
    own = spec.defaults()
    for key in spec.fixed:
        if key in given and given[key] != own[key]:
            raise OpplanError(
                f"model {spec.name!r} has {key} {own[key]}, got {key} {given[key]}; "
                f"leave model.{key} null (or pick a model whose {key} can change: "
                f"{', '.join(s.name for s in _SPECS if s.config is not None and key not in s.fixed)})"
            )
    if "depth" in given and given["depth"] not in LAYOUTS:
        raise OpplanError(f"model {spec.name!r}: depth must be one of {sorted(LAYOUTS)}, got {given['depth']}")
    for key in ("width", "early_stride"):
        if key in given and not (isinstance(given[key], int) and given[key] > 0):
            raise OpplanError(f"model {spec.name!r}: {key} must be a positive integer, got {given[key]!r}")
    if "dropout" in given and not 0.0 <= float(given["dropout"]) <= 1.0:
        raise OpplanError(f"model {spec.name!r}: dropout must be in [0, 1], got {given['dropout']}")
    return given


def build_model(name: str, num_classes: int, **params: object) -> VideoNet:
    """A fresh model: forward (N, 3, T, H, W) -> logits (N, num_classes).

    ``params``: ``dropout``, ``width``, ``depth``, ``early_stride``; None or absent
    means the registered model's own value.
    """
    spec = get_spec(name)
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise OpplanError(f"num_classes must be a positive integer, got {num_classes!r}")
    given = _resolve(spec, params)
    if spec.config is None:
        from opplan.models.baselines import TorchvisionVideo

        return TorchvisionVideo(spec.name, num_classes, float(given.get("dropout", 0.5)))
    cfg = dataclasses.replace(spec.config, **given)
    log.debug("building %s: %s", name, cfg)
    return P3DResNet(num_classes, cfg)


def build_model_from_params(model_params: ModelParams, num_classes: int) -> VideoNet:
    """``build_model`` from the ``model:`` section, then its ``init`` (``imagenet:PATH`` or ``checkpoint:PATH``)."""
    model = build_model(
        model_params.name, num_classes,
        dropout=model_params.dropout, width=model_params.width, depth=model_params.depth,
    )
    init = model_params.init
    if init:
        scheme, sep, path = init.partition(":")
        if scheme not in ("imagenet", "checkpoint") or not sep or not path:
            raise OpplanError(
                f"model.init must be 'imagenet:PATH' (a local torchvision 2D ResNet state_dict) or "
                f"'checkpoint:PATH' (an opplan model.pt or a torchvision video model state_dict), got {init!r}"
            )
        if scheme == "imagenet":
            from opplan.models.inflate import inflate_imagenet

            inflate_imagenet(model, path)
        else:
            from opplan.models.warm_start import load_checkpoint_init

            load_checkpoint_init(model, path)
    return model
