"""``opplan export``: every model of the zoo round-trips through TorchScript and ONNX."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from opplan.errors import OpplanError
from opplan.export import export_model
from opplan.models import build_model, model_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 3, 4, 32, 32)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", model_names())
def test_every_zoo_model_round_trips(name: str, fmt: str, tmp_path: Path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(name, 6)
    path = tmp_path / f"model.{fmt}"
    error = export_model(model, fmt, path, SHAPE)
    assert path.is_file() and error < 1e-4
    if fmt == "torchscript":  # the file alone gives the model's logits, on another clip and batch too
        clip = torch.randn(2, *SHAPE[1:])
        with torch.no_grad():
            assert torch.allclose(torch.jit.load(str(path))(clip), model.eval()(clip), atol=1e-4)


class _Spectrum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(x.flatten(1)).real


def test_a_model_onnx_cannot_express_is_one_clear_line(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(OpplanError) as err:
        export_model(_Spectrum(), "onnx", tmp_path / "m.onnx", SHAPE)
    assert str(err.value).startswith("_Spectrum cannot be exported to onnx: ") and "\n" not in str(err.value)


def test_onnx_without_its_packages_says_which_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(OpplanError, match=r"opplan\[export\]"):
        export_model(build_model("p3d_tiny", 3), "onnx", tmp_path / "m.onnx", SHAPE)
