"""Pick the compute device: CUDA when there is one, else CPU, with no code change."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto", index: int | None = None) -> torch.device:
    """``auto`` takes CUDA if available, else CPU; ``cuda`` without a GPU is an error.

    ``index`` picks one of several GPUs (a DDP process's local rank, a planning worker's
    slot); it is ignored on CPU.
    """
    from opplan.errors import OpplanError

    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        if index is None:
            return torch.device("cuda")
        if index >= torch.cuda.device_count():
            raise OpplanError(f"CUDA device {index} was asked for but this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    if preference == "cuda":
        raise OpplanError("device: cuda was asked for in params.yaml but no CUDA device is available")
    return torch.device("cpu")
