"""Exporting a trained model to TorchScript or ONNX, each export checked against the model.

``opplan export`` writes the file, loads it back (TorchScript with ``torch.jit.load``, ONNX
with onnxruntime) and compares its output with the model's on a random clip. ONNX needs
the ``export`` extra (``pip install 'opplan[export]'``: onnx and onnxruntime).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from opplan.errors import OpplanError
from opplan.fileio import atomic_write_bytes

FORMATS = ("torchscript", "onnx")


class _Logits(nn.Module):
    """``model(x)`` with the registry's ``heads`` argument fixed to False (one input, one output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def export_model(model: nn.Module, fmt: str, path: Path, shape: tuple[int, ...], *, seed: int = 0) -> float:
    """Write ``model`` (eval mode, CPU) as ``fmt`` to ``path``; the largest difference between
    the loaded export's logits and the model's on a random clip of ``shape``, relative to the
    largest logit (at least 1): deep random-init networks have logits in the hundreds."""
    model = _Logits(model.cpu().eval())
    clip = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(clip).numpy()
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes become constants: the export's point
            got = _torchscript(model, clip, path) if fmt == "torchscript" else _onnx(model, clip, path)
    except OpplanError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracing and ONNX export fail in many ways on unsupported ops
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise OpplanError(f"{type(model.model).__name__} cannot be exported to {fmt}: {first}") from None
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def _torchscript(model: nn.Module, clip: torch.Tensor, path: Path) -> np.ndarray:
    with torch.no_grad():
        traced = torch.jit.trace(model, clip, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(clip).numpy()


def _onnx(model: nn.Module, clip: torch.Tensor, path: Path) -> np.ndarray:
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime
    except ImportError:
        raise OpplanError("ONNX export needs the onnx and onnxruntime packages: "
                          "pip install 'opplan[export]'") from None
    buffer = io.BytesIO()
    torch.onnx.export(model, (clip,), buffer, input_names=["clips"], output_names=["logits"],
                      dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    atomic_write_bytes(path, buffer.getvalue())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"clips": clip.numpy()})[0]
