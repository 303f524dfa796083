"""ImageNet inflation: the inflated P3D body computes the 2D ResNet frame by frame."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50, resnet101

from opplan.config import ModelParams
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_bytes
from opplan.models import build_model, build_model_from_params, inflate_imagenet

NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(state: dict, path: Path) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _random_bn(net: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics and affine parameters, so copying them is checked."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)  # keeps activations tame over 50 layers
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    net = resnet50(weights=None)
    _random_bn(net)
    net.eval()
    return net, _save(net.state_dict(), tmp_path_factory.mktemp("imagenet") / "resnet50.pth")


def _features_2d(net: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> globally pooled res5 features (N, 2048) of a torchvision ResNet."""
    trunk = nn.Sequential(*list(net.children())[:-1])
    with torch.no_grad():
        return trunk(frames).flatten(1)


@pytest.mark.parametrize("name", ["p3d_r50", "dg_p3d_r50"])
def test_inflated_features_equal_2d_on_a_still_clip(name: str, resnet50_file: tuple[nn.Module, Path]) -> None:
    net, path = resnet50_file
    model = build_model(name, NUM_CLASSES)
    inflate_imagenet(model, path)
    model.eval()
    image = torch.randn(2, 3, 64, 64)
    clip = image[:, :, None].expand(-1, -1, 8, -1, -1).contiguous()  # 8 identical frames
    expected = _features_2d(net, image)
    with torch.no_grad():
        got = model.pooled_features(clip)["temporal"]
    assert expected.abs().mean() > 1e-3  # not a trivially zero feature
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_inflated_body_is_the_2d_network_frame_by_frame(resnet50_file: tuple[nn.Module, Path]) -> None:
    """On a moving clip, res5 at time step t is the 2D res5 of frame 4t+2 (stem: centre tap of 4)."""
    net, path = resnet50_file
    model = build_model("p3d_r50", NUM_CLASSES)
    inflate_imagenet(model, path)
    model.eval()
    clip = torch.randn(1, 3, 8, 64, 64)
    trunk_2d = nn.Sequential(*list(net.children())[:-2])
    with torch.no_grad():
        got = model.layer4(model.trunk(clip))  # (1, 2048, 2, 2, 2)
        for t, frame in enumerate((2, 6)):
            expected = trunk_2d(clip[:, :, frame])
            np.testing.assert_allclose(got[:, :, t].numpy(), expected.numpy(), rtol=1e-4,
                                       atol=1e-5 * expected.abs().max().item())


def test_inflation_keeps_heads_and_context_fresh(resnet50_file: tuple[nn.Module, Path]) -> None:
    _, path = resnet50_file
    torch.manual_seed(1)
    model = build_model("dg_p3d_r50", NUM_CLASSES)
    head_before = model.head.fc.weight.clone()
    inflate_imagenet(model, path)
    torch.testing.assert_close(model.head.fc.weight, head_before)
    torch.testing.assert_close(model.fusion.detach(), torch.tensor([0.5, 0.5]))
    assert all(torch.count_nonzero(m.gc.expand.weight) == 0 for m in model.layer1)
    # the spatial head's res5 starts as res5
    torch.testing.assert_close(model.layer4_spatial[0].conv1.weight, model.layer4[0].conv1.weight)


def test_i3d_inflation_repeats_kernels_over_time(resnet50_file: tuple[nn.Module, Path]) -> None:
    net, path = resnet50_file
    model = build_model("i3d_r50", NUM_CLASSES)
    inflate_imagenet(model, path)
    w3d = model.layer2[1].unit.conv_s.weight
    assert w3d.shape[2] == 3
    torch.testing.assert_close(w3d.sum(dim=2), net.layer2[1].conv2.weight)


def test_init_from_params(resnet50_file: tuple[nn.Module, Path]) -> None:
    net, path = resnet50_file
    model = build_model_from_params(ModelParams(name="g_p3d_r50", init=f"imagenet:{path}"), NUM_CLASSES)
    torch.testing.assert_close(model.layer3[2].conv3.weight[:, :, 0], net.layer3[2].conv3.weight)


def test_wrong_architecture_is_named(tmp_path: Path) -> None:
    path = _save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(OpplanError, match=r"basic blocks \[2, 2, 2, 2\].*\n.*missing keys") as info:
        inflate_imagenet(build_model("p3d_r50", NUM_CLASSES), path)
    assert "resnet50" in str(info.value)


def test_wrong_depth_is_named(tmp_path: Path) -> None:
    path = _save(resnet101(weights=None).state_dict(), tmp_path / "r101.pth")
    with pytest.raises(OpplanError, match=r"unexpected keys \(\d+\): layer3\.10\."):
        inflate_imagenet(build_model("p3d_r50", NUM_CLASSES), path)


def test_wrong_width_is_named(resnet50_file: tuple[nn.Module, Path]) -> None:
    _, path = resnet50_file
    with pytest.raises(OpplanError, match=r"conv1.weight has shape \(64, 3, 7, 7\).*another width"):
        inflate_imagenet(build_model("p3d_r50", NUM_CLASSES, width=32), path)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "weights.pth"
    if content is not None:
        atomic_write_bytes(path, content)
    with pytest.raises(OpplanError, match="weights.pth"):
        inflate_imagenet(build_model("p3d_r50", NUM_CLASSES), path)


def test_torchvision_baselines_cannot_be_inflated(resnet50_file: tuple[nn.Module, Path]) -> None:
    _, path = resnet50_file
    with pytest.raises(OpplanError, match="P3D-family"):
        inflate_imagenet(build_model("r2plus1d_18", NUM_CLASSES), path)
