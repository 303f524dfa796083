"""Read a weights file from local disk into a flat ``{name: tensor}`` mapping (docs/design.md §7).

One reader for every way a model starts from a file: ImageNet inflation (``imagenet:PATH``)
and warm starts (``checkpoint:PATH``). Loading is ``weights_only``; the common wrappers
(opplan's ``model.pt``, ``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and the
``module.`` prefix of a DDP-saved file is dropped. Every refusal is one line naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from opplan.errors import OpplanError
from opplan.train.checkpoint import FORMAT as OPPLAN_FORMAT  # opplan's own model.pt: tensors under state_dict


def read_state_dict(path: str | Path, *, kind: str, missing: str) -> dict[str, Tensor]:
    """The tensors in ``path``; ``kind`` names the file in refusals ("checkpoint"), ``missing``
    says what the setting wants when the file is absent."""
    path = Path(path)
    if not path.is_file():
        raise OpplanError(f"{path}: no such {kind} file ({missing})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds: truncated zip, pickle, weights_only refusals
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise OpplanError(f"{path}: not a loadable PyTorch {kind} ({type(exc).__name__}: {first})") from None
    if isinstance(obj, Mapping) and obj.get("format") == OPPLAN_FORMAT:
        obj = obj.get("state_dict")
    else:
        for key in ("state_dict", "model"):  # common checkpoint wrappers
            if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
                obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise OpplanError(f"{path}: not a {kind} (expected a state_dict of tensors, found a {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}
