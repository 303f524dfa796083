"""Inflate a 2D ImageNet ResNet into a P3D-family body (docs/design.md §7; I3D's "inflation").

The file is a torchvision ``resnet50``/``resnet101`` ``state_dict`` on local disk
(nothing is downloaded). Mapping, chosen so that the inflated network computes the
2D network frame by frame (identical frames in -> the 2D features out):

1. stem ``conv1`` (7x7) -> the ``early_stride``x7x7 stem: the 2D kernel at the
   centre tap, zeros elsewhere (the authors' ``transfer_weights``);
2. ``conv2`` (3x3) -> the spatial 1x3x3 convolution ``S`` of each P3D block;
   the temporal 3x1x1 convolution ``T`` becomes the *block-level identity*:
   P3D-A (``T`` after ``S``) gets the identity kernel (centre tap = identity matrix),
   P3D-B (``S + T``) and P3D-C (``S + T(S)``) get zeros. No temporal rescaling is
   needed anywhere. I3D's 3x3x3 kernels get the 2D kernel repeated over time / 3
   (Carreira & Zisserman's bootstrapping: exact up to the zero-padded edge frames);
3. 1x1 convolutions, BatchNorm layers and shortcuts copied; the spatial head's res5
   starts as a copy of res5 (as in the authors' code);
4. global-context transforms keep their zero-initialised expand layer and the
   classifiers their fresh init (the 2D ``fc`` is for other classes and is ignored).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from opplan.errors import OpplanError
from opplan.models.blocks import Bottleneck
from opplan.models.p3d import P3DResNet, describe
from opplan.models.weights_file import read_state_dict

log = logging.getLogger(__name__)

_SKIPPED = re.compile(r"(\.gc\.|^head|^fusion|\.unit\.conv_t\.)")


def _source_key(key: str) -> str | None:
    """The 2D ResNet key a P3D body's parameter/buffer is inflated from (None: keep its init)."""
    if _SKIPPED.search(key):
        return None
    key = key.replace("stem.conv.", "conv1.").replace("stem.bn.", "bn1.")
    key = key.replace("layer4_spatial.", "layer4.")
    return key.replace(".unit.conv_s.", ".conv2.").replace(".unit.bn.", ".bn2.")


def _describe_file(state: Mapping[str, Tensor]) -> str:
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(max(ids) + 1 if ids else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    width = state["conv1.weight"].shape[0] if "conv1.weight" in state else "?"
    return f"a ResNet with {kind} blocks {blocks}, width {width}"


def _check_keys(model: P3DResNet, state: Mapping[str, Tensor], path: Path) -> None:
    needed = {src for k in model.state_dict() if (src := _source_key(k)) is not None}
    missing = sorted(needed - set(state))
    unexpected = sorted(k for k in set(state) - needed if not k.startswith("fc."))
    if missing or unexpected:
        lines = [f"{path}: does not fit {describe(model.cfg)}; the file holds {_describe_file(state)}."]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
        lines.append("Use torchvision resnet50 weights for *_r50 models, resnet101 for *_r101 (width 64).")
        raise OpplanError("\n".join(lines))


def _inflate_tensor(key: str, src: Tensor, dst: Tensor, path: Path) -> Tensor:
    """Shape ``src`` (a 2D parameter) like ``dst`` (its 3D counterpart)."""
    if src.dim() == 4 and dst.dim() == 5:
        if src.shape != dst.shape[:2] + dst.shape[3:]:
            raise OpplanError(f"{path}: {_source_key(key)} has shape {tuple(src.shape)}, "
                              f"but {key} needs {tuple(dst.shape[:2] + dst.shape[3:])} (another width?)")
        t = dst.shape[2]
        out = torch.zeros_like(dst)
        if ".unit.conv_s." in key and t > 1:  # I3D: repeat over time, divided by the taps
            out[:] = (src / t).unsqueeze(2).to(dst.dtype)
        else:  # 1x1 kernels and the stem: centre tap
            out[:, :, t // 2] = src.to(dst.dtype)
        return out
    if src.shape != dst.shape:
        raise OpplanError(
            f"{path}: {_source_key(key)} has shape {tuple(src.shape)}, but {key} needs {tuple(dst.shape)}"
        )
    return src.to(dst.dtype)


def _temporal_identity(model: P3DResNet) -> dict[str, Tensor]:
    """Block-level identity for every temporal convolution: identity kernel in A, zeros in B and C."""
    out = {}
    for name, module in model.named_modules():
        conv = getattr(module, "conv_t", None)
        if not isinstance(conv, nn.Conv3d):
            continue
        w = torch.zeros_like(conv.weight)
        if module.kind == "A":
            w[:, :, 1, 0, 0] = torch.eye(w.shape[0], w.shape[1], dtype=w.dtype)
        out[f"{name}.conv_t.weight"] = w
    return out


def inflate_imagenet(model: nn.Module, state_dict_path: str | Path) -> None:
    """Load a local torchvision 2D ResNet-50/101 ``state_dict`` into ``model``'s P3D body, in place.

    Raises :class:`OpplanError` naming the problem when the file cannot be read or
    does not fit the model (wrong depth, width or block type).
    """
    path = Path(state_dict_path)
    if not isinstance(model, P3DResNet):
        raise OpplanError(f"ImageNet inflation needs a P3D-family model (dg_p3d_*, g_p3d_*, p3d_*, i3d_r50), "
                          f"got {type(model).__name__}")
    if model.cfg.block is not Bottleneck:
        raise OpplanError(f"ImageNet inflation needs a bottleneck body (depth 50 or 101), got {describe(model.cfg)}")
    state = read_state_dict(path, kind="ImageNet weights", missing="model.init: imagenet:PATH wants a local torchvision state_dict")
    _check_keys(model, state, path)
    target = model.state_dict()
    new = {}
    for key, dst in target.items():
        src_key = _source_key(key)
        if src_key is not None:
            new[key] = _inflate_tensor(key, state[src_key], dst, path)
    new.update(_temporal_identity(model))
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value)
    log.info("inflated %d tensors from %s into %s", len(new), path, describe(model.cfg))
