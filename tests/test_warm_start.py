"""``model.init: checkpoint:PATH``: a run starts from a 3D checkpoint's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import video

from opplan.config import ModelParams
from opplan.errors import OpplanError
from opplan.models import build_model, build_model_from_params
from opplan.train.checkpoint import model_identity, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The torchvision body's output before the classifier."""
    net = model.net if hasattr(model, "net") else model
    out = net.stem(x)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        out = layer(out)
    return net.avgpool(out).flatten(1)


@pytest.mark.parametrize("arch", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_state_dict_gives_the_source_features(arch: str, tmp_path: Path, caplog) -> None:
    torch.manual_seed(1)
    source = getattr(video, arch)(weights=None, num_classes=400).eval()  # as torchvision saves Kinetics weights
    for m in source.modules():  # non-trivial BN statistics, so that copying them is checked
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{arch}.pth"
    torch.save(source.state_dict(), path)
    caplog.set_level("INFO", logger="opplan.models.warm_start")
    model = build_model_from_params(ModelParams(name=arch, init=f"checkpoint:{path}"), 7).eval()
    fresh = build_model(arch, 7).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(_features(model, x), _features(source, x), atol=1e-5)
        assert not torch.allclose(_features(fresh, x), _features(source, x), atol=1e-3)
        assert model(x).shape == (2, 7)
    line = next(r.getMessage() for r in caplog.records if "model.init" in r.getMessage())
    assert "skipped 2" in line and "for 2" in line and "net.fc.1.weight" in line  # fc of 400 classes replaced


def test_opplan_checkpoint_gives_the_same_forward(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = build_model("dg_p3d_tiny", 5, width=8).eval()
    with torch.no_grad():
        source.fusion.copy_(torch.tensor([0.3, 0.7]))
    path = tmp_path / "model.pt"
    save_model(path, source, model_identity({"name": "dg_p3d_tiny", "width": 8}, 5))
    model = build_model_from_params(ModelParams(name="dg_p3d_tiny", width=8, init=f"checkpoint:{path}"), 5).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))  # same classes: the classifier is kept too
    other = build_model_from_params(ModelParams(name="dg_p3d_tiny", width=8, init=f"checkpoint:{path}"), 3)
    for key, value in source.state_dict().items():
        if ".fc." not in key:
            assert torch.equal(other.state_dict()[key], value), key


def _refusal(tmp_path: Path, init: str, name: str = "r3d_18", **kw: object) -> str:
    with pytest.raises(OpplanError) as err:
        build_model_from_params(ModelParams(name=name, init=init, **kw), 4)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_wrong_files_are_refused_in_one_line(tmp_path: Path) -> None:
    other = tmp_path / "r2plus1d.pth"
    torch.save(video.r2plus1d_18(weights=None).state_dict(), other)
    assert "another" in _refusal(tmp_path, f"checkpoint:{other}")  # R(2+1)D weights into R3D
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(other.read_bytes()[:5000])
    assert "truncated.pth: not a loadable PyTorch checkpoint" in _refusal(tmp_path, f"checkpoint:{truncated}")
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    assert "notes.pth: not a loadable" in _refusal(tmp_path, f"checkpoint:{text}")
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    assert "list.pth: not a checkpoint" in _refusal(tmp_path, f"checkpoint:{listing}")
    tiny = tmp_path / "tiny.pt"
    save_model(tiny, build_model("p3d_tiny", 4), {})
    assert "tiny.pt" in _refusal(tmp_path, f"checkpoint:{tiny}", name="dg_p3d_tiny")  # no global context in the file
    assert "no such checkpoint file" in _refusal(tmp_path, f"checkpoint:{tmp_path / 'absent.pt'}")
    assert "model.init must be" in _refusal(tmp_path, "kinetics:x.pt")
