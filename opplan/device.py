"""The compute device and how to use it: CUDA when there is one, else CPU, with no code change.

Everything that depends on the device lives here: which device, mixed precision,
deterministic kernels, memory layout, ``torch.compile`` and how many loader workers
keep it fed. Measurements behind the defaults: docs/gpu.md.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from opplan.errors import OpplanError

CUDAGRAPHS_ATTR = "_opplan_cudagraphs"
"""Set on a model compiled with CUDA graphs: the training loop then marks each step's start."""

CHANNELS_LAST_MODELS = frozenset({"r2plus1d_18", "r3d_18"})
"""Models measured faster with channels-last 3D on an H200 (+50 % in bf16; docs/gpu.md)."""

MAX_AUTO_WORKERS = 8
"""Loader workers per GPU beyond which the H200 node's loader got slower (docs/gpu.md)."""


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


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; None (full precision) on CPU or ``off``."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler for float16 (whose small gradients underflow); a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (docs/determinism.md) or, off, cuDNN's benchmarked fastest ones.

    On: ops without a deterministic kernel warn instead of failing; cuBLAS needs its
    workspace size fixed before its first use.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on


CPU_ISA_ENV: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
"""The environment that caps torch's CPU kernels (ATen's vectorised kernels and oneDNN's
convolutions) at an instruction set, so that machines with more (AVX-512, AMX) compute what a
machine with just that one does (docs/determinism.md, "Across machines")."""


def pin_cpu(isa: str, threads: int | None) -> None:
    """Fix what makes CPU results differ between x86-64 machines: the kernels' instruction set
    (``train.cpu_isa``) and the number of torch threads (``train.cpu_threads``; None leaves it).

    Must run before this process's first CPU kernel: torch chooses its kernels once. The
    variables stay in the environment, so that processes started from this one (planning
    workers, ``torchrun``) compute the same way.
    """
    if isa != "native":
        os.environ.update(CPU_ISA_ENV[isa])
        chosen = torch.backends.cpu.get_cpu_capability()
        if chosen.lower() != isa:
            raise OpplanError(f"train.cpu_isa: {isa} asked for, but torch computes with {chosen} in this process "
                              f"(the CPU lacks {isa}, or a kernel ran before the setting was applied); "
                              f"use cpu_isa: native")
    if threads is not None:
        torch.set_num_threads(threads)


def use_channels_last(mode: str, model_name: str, device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    return mode == "on" or (mode == "auto" and model_name in CHANNELS_LAST_MODELS)


def compile_model(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """``model`` compiled in place (``nn.Module.compile``: its ``state_dict`` keys stay as they
    are) with ``mode`` on CUDA; unchanged for ``off`` or on CPU."""
    if mode == "off" or device.type != "cuda":
        return model
    model.compile(mode=mode)
    setattr(model, CUDAGRAPHS_ATTR, mode == "reduce-overhead")
    return model


def uses_cudagraphs(model: nn.Module) -> bool:
    return bool(getattr(model, CUDAGRAPHS_ATTR, False))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(device: torch.device, processes_per_node: int = 1, cores: int | None = None) -> int:
    """Loader workers for ``num_workers: auto`` (see ``TrainParams.num_workers``)."""
    cores = usable_cores() if cores is None else cores
    share = max(cores // max(processes_per_node, 1), 1)
    if device.type == "cuda":
        return max(min(share - 1, MAX_AUTO_WORKERS), 0)
    return min(share // 4, 4)
