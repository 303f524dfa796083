"""Start from a 3D checkpoint (``model.init: checkpoint:PATH``, docs/design.md §7).

The file is opplan's own model checkpoint (``final/model.pt``, any ``model.pt`` of a run)
or a torchvision video model ``state_dict`` (``r3d_18``, ``mc3_18``, ``r2plus1d_18`` as
``torch.save(model.state_dict())`` writes it, e.g. Kinetics-400 weights kept on local disk;
nothing is downloaded). Every tensor of the body must be in the file with its shape;
the classifier (``fc``) is taken when its shape fits and replaced by the model's fresh
one when it does not (another number of classes). Loading is ``weights_only``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from opplan.errors import OpplanError
from opplan.models.weights_file import read_state_dict

log = logging.getLogger(__name__)

_CLASSIFIER = re.compile(r"(^|\.)fc(\.\d+)?\.(weight|bias)$")
"""The classifier's tensors: ``head.fc``/``head_spatial.fc`` (P3D) and ``net.fc.1`` (torchvision)."""


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The tensors of an opplan checkpoint or of a plain ``state_dict`` file (``weights_only``)."""
    return read_state_dict(path, kind="checkpoint", missing="model.init: checkpoint:PATH wants a local file")


def _candidates(key: str) -> list[str]:
    """Names ``key`` (a parameter of our model) may have in the file: ours, or torchvision's own
    (no ``net.`` prefix, classifier ``fc`` instead of our dropout + ``fc.1``)."""
    names = [key]
    if key.startswith("net."):
        bare = key.removeprefix("net.")
        names += [bare, re.sub(r"^fc\.1\.", "fc.", bare)]
    return names


def load_checkpoint_init(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Copy a 3D checkpoint's weights into ``model`` in place; returns the counts it reports.

    Refuses (one line, nothing copied) a file that misses a tensor of the body or holds it
    with another shape: another architecture, depth or width.
    """
    path = Path(path)
    state = read_checkpoint(path)
    target = model.state_dict()
    new: dict[str, Tensor] = {}
    used: set[str] = set()
    replaced: list[str] = []
    missing: list[str] = []
    for key, dst in target.items():
        src_key = next((k for k in _candidates(key) if k in state), None)
        if src_key is None:
            (replaced if _CLASSIFIER.search(key) else missing).append(key)
            continue
        src = state[src_key]
        if tuple(src.shape) == tuple(dst.shape):
            new[key] = src
            used.add(src_key)
        elif _CLASSIFIER.search(key):
            replaced.append(key)
        else:
            raise OpplanError(f"{path}: {src_key} has shape {tuple(src.shape)}, but {key} of "
                              f"{type(model).__name__} needs {tuple(dst.shape)} (another width or architecture?); "
                              f"nothing was loaded")
    if missing:
        raise OpplanError(f"{path}: does not fit this model: {len(missing)} of its {len(target)} tensors are not in "
                          f"the file (e.g. {', '.join(missing[:3])}); another architecture? nothing was loaded")
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value.to(target[key].dtype))
    skipped = len(set(state) - used)  # the file's tensors not copied (its own classifier among them)
    report = {"loaded": len(new), "skipped": skipped, "reshaped": len(replaced)}
    log.info("model.init: loaded %d tensors from %s, skipped %d of the file's, classifier replaced (new shape) "
             "for %d%s", len(new), path, skipped, len(replaced), f" ({', '.join(replaced)})" if replaced else "")
    return report
