"""Parameter and GFLOPs counts against known values; the ``opplan model-info`` command."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision.models import video

from opplan.cli import cli
from opplan.models import build_model, count_gflops, count_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_counts_a_hand_computed_network() -> None:
    net = nn.Sequential(
        nn.Conv3d(3, 8, (3, 3, 3), padding=1, bias=False),   # 8*4*6*6 outputs x 3*27 MACs = 93312
        nn.Conv3d(8, 8, 1, groups=2),                        # 1152 outputs x 4 MACs = 4608
        nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(8, 5),                                     # 40
    )
    assert count_gflops(net, clip_length=4, size=6) * 1e9 == pytest.approx(93312 + 4608 + 40)
    assert count_params(net) == 8 * 3 * 27 + (8 * 4 + 8) + (8 * 5 + 5)


@pytest.mark.parametrize("name,weights", [
    ("r3d_18", video.R3D_18_Weights.KINETICS400_V1),
    ("mc3_18", video.MC3_18_Weights.KINETICS400_V1),
    ("r2plus1d_18", video.R2Plus1D_18_Weights.KINETICS400_V1),
])
def test_torchvision_published_numbers(name: str, weights: video.Weights) -> None:
    """torchvision's model cards: GFLOPS for one 16x112² clip, parameters for 400 classes."""
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = build_model(name, 400)
    assert count_gflops(model, 16, 112) == pytest.approx(weights.meta["_ops"], rel=0.02)
    assert count_params(model) == weights.meta["num_params"]


@pytest.mark.parametrize("name,paper_gflops", [("dg_p3d_r50", 123), ("dg_p3d_r101", 218)])
def test_dg_p3d_compute_matches_the_paper(name: str, paper_gflops: float) -> None:
    """Table 8 lists DG-P3D at 123 (ResNet-50) and 218 (ResNet-101) GFLOPs per view.

    Our count matches at 64x256² multiply-adds (= 32x256² FLOPs), which checks the whole
    architecture: stem stride, P3D blocks, global context and both heads.
    """
    with torch.device("meta"):
        model = build_model(name, 400)
    assert count_gflops(model, 64, 256) == pytest.approx(paper_gflops, rel=0.02)


def test_meta_and_real_counts_agree_and_mode_is_restored() -> None:
    model = build_model("dg_p3d_tiny", 10).train()
    real = count_gflops(model, 8, 32)
    assert model.training
    with torch.device("meta"):
        meta = build_model("dg_p3d_tiny", 10)
    assert count_gflops(meta, 8, 32) == real > 0
    assert count_gflops(model, 16, 32) > 1.5 * real  # compute grows with the clip


def test_model_info_json() -> None:
    result = CliRunner().invoke(cli, ["model-info", "r2plus1d_18", "--clip-length", "16", "--size", "112", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert set(info) == {"name", "params", "gflops", "clip_length", "size"}
    assert info["name"] == "r2plus1d_18" and info["clip_length"] == 16 and info["size"] == 112
    assert info["gflops"] == pytest.approx(40.52, rel=1e-3)


def test_model_info_text_and_list() -> None:
    runner = CliRunner()
    args = ["model-info", "dg_p3d_tiny", "--clip-length", "8", "--size", "32", "--num-classes", "10"]
    text = runner.invoke(cli, args)
    assert text.exit_code == 0 and "dg_p3d_tiny" in text.output and "GFLOPs" in text.output
    listed = runner.invoke(cli, ["model-info", "--list"])
    assert listed.exit_code == 0
    names = [line.split()[0] for line in listed.output.splitlines()]
    assert {"dg_p3d_r50", "dg_p3d_tiny", "r3d_18", "mc3_18", "r2plus1d_18"} <= set(names)


@pytest.mark.parametrize("args,message", [
    (["model-info", "resnet9000"], "known models: dg_p3d_r50"),
    (["model-info"], "NAME or --list"),
    (["model-info", "dg_p3d_r50", "--clip-length", "2"], "at least 4 frames"),
])
def test_model_info_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output
