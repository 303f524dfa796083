"""Pick the compute device: CUDA when there is one, else CPU, with no code change."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` takes CUDA if available, else CPU; ``cuda`` without a GPU is an error."""
    from opplan.errors import OpplanError

    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise OpplanError("device: cuda was asked for in params.yaml but no CUDA device is available")
    return torch.device("cpu")
