"""The model registry: every model's shapes, gradients and determinism; DG-P3D's heads; BN freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from opplan.config import ModelParams
from opplan.errors import OpplanError
from opplan.models import build_model, build_model_from_params, model_names, set_bn_freeze
from opplan.models.base import bn_layers
from opplan.models.p3d import P3DResNet

NUM_CLASSES = 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


REQUIRED = {
    "dg_p3d_r50", "dg_p3d_r101", "g_p3d_r50", "p3d_r50", "r3d_18", "mc3_18", "r2plus1d_18",
    "dg_p3d_tiny", "g_p3d_tiny", "p3d_tiny", "i3d_r50",
}


def small(name: str) -> nn.Module:
    """The registered model, as small as its name allows."""
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, width=8 if name.endswith("_tiny") else None)


def test_registry_has_the_required_models() -> None:
    assert REQUIRED <= set(model_names())


@pytest.mark.parametrize("name", model_names())
def test_forward_backward(name: str) -> None:
    model = small(name).train()
    # Batch 2: at 32x32 res5 is 1x1 and BatchNorm needs more than one value per channel.
    x = torch.randn(2, 3, 4, 32, 32)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in params), [n for n, p in params if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    assert sum(p.grad.abs().sum() for _, p in params) > 0


@pytest.mark.parametrize("name", model_names())
def test_any_clip_length_and_size_in_eval_mode(name: str) -> None:
    model = small(name).eval()
    shapes = [(4, 32), (7, 40), (16, 48)] if name.endswith("_tiny") else [(4, 40), (9, 32)]
    with torch.no_grad():
        for t, s in shapes:
            x = torch.randn(1, 3, t, s, s)
            first = model(x)
            assert first.shape == (1, NUM_CLASSES), (t, s)
            assert torch.isfinite(first).all()
            torch.testing.assert_close(model(x), first, rtol=0, atol=0)  # deterministic in eval mode


@pytest.mark.parametrize("name", ["dg_p3d_tiny", "dg_p3d_r50"])
def test_long_clips(name: str) -> None:
    model = small(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 32, 32)).shape == (1, NUM_CLASSES)


def test_dual_head_logits_and_fusion_gradient() -> None:
    model = small("dg_p3d_tiny").train()
    x = torch.randn(4, 3, 8, 32, 32)
    torch.manual_seed(1)
    heads = model(x, heads=True)
    assert heads.shape == (4, 3, NUM_CLASSES)  # temporal, spatial, fused
    temporal, spatial, fused = heads.unbind(1)
    assert not torch.allclose(temporal, spatial)
    w = model.fusion
    torch.testing.assert_close(fused, w[0] * temporal + w[1] * spatial)
    torch.manual_seed(1)  # same dropout masks: the plain forward is the fused logits
    torch.testing.assert_close(model(x), fused)
    nn.functional.cross_entropy(fused, torch.tensor([0, 1, 2, 3])).backward()
    assert w.grad is not None and w.grad.abs().min() > 0
    assert model.head_spatial.fc.weight.grad.abs().sum() > 0 and model.head.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["g_p3d_tiny", "r3d_18"])
def test_single_head_models_give_one_head(name: str) -> None:
    model = small(name).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        heads, plain = model(x, heads=True), model(x)
    assert heads.shape == (2, 1, NUM_CLASSES)
    torch.testing.assert_close(heads[:, 0], plain)


def test_forward_returns_fresh_tensors_not_views_of_one_dict() -> None:
    """torch.compile's CUDA graphs reuse output memory between calls: the forward must give
    each caller its own tensor (a plain Tensor, never a dict or views of a shared stack)."""
    model = small("dg_p3d_tiny").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 4, 32, 32))
    assert type(out) is torch.Tensor and out._base is None


def test_p3d_c_activates_before_the_temporal_convolution_and_its_shortcut() -> None:
    """The authors' Bottleneck_C: relu(relu(S) + T(relu(S))); the second unit of a basic block
    meets the residual before any ReLU, so there S + T(S)."""
    from opplan.models.blocks import P3DUnit

    torch.manual_seed(0)
    unit = P3DUnit("C", 4, 4).eval()
    x = torch.randn(1, 4, 3, 5, 5)
    with torch.no_grad():
        s = torch.relu(unit.bn(unit.conv_s(x)))
        torch.testing.assert_close(unit(x), s + unit.conv_t(s))
        plain = P3DUnit("C", 4, 4, activated=False).eval()
        plain.load_state_dict(unit.state_dict())
        s = plain.bn(plain.conv_s(x))
        torch.testing.assert_close(plain(x), s + plain.conv_t(s))
    basic = build_model("p3d_tiny", NUM_CLASSES, depth=10)
    units = [(b.unit1.activated, b.unit2.activated) for b in basic.layer1]
    assert units == [(True, False)]


def test_global_context_is_reduce_relu_expand_without_layernorm() -> None:
    from opplan.models.blocks import GlobalContext

    gc = GlobalContext(256)
    assert [type(m) for m in gc.children()] == [nn.Linear, nn.Linear]
    assert gc.reduce.out_features == 16  # the authors' C // 16
    x = torch.randn(2, 256, 2, 3, 3)
    assert torch.equal(gc(x), torch.zeros(2, 256, 1, 1, 1))  # zero expand: a fresh block is undisturbed
    nn.init.normal_(gc.expand.weight)
    expected = gc.expand(torch.relu(gc.reduce(x.mean(dim=(2, 3, 4)))))
    torch.testing.assert_close(gc(x)[:, :, 0, 0, 0], expected)


def test_heads_see_different_shapes() -> None:
    """Temporal head keeps more time steps, spatial head more pixels (paper §4, Figure 3)."""
    model = small("dg_p3d_r50").eval()
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("temporal", o.shape))
    model.layer4_spatial.register_forward_hook(lambda m, i, o: seen.__setitem__("spatial", o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 224, 224))
    assert seen["temporal"][2:] == (4, 7, 7)
    assert seen["spatial"][2:] == (1, 14, 14)


@pytest.mark.parametrize("name,has_fusion", [("g_p3d_tiny", False), ("p3d_tiny", False), ("dg_p3d_tiny", True)])
def test_ablation_switches(name: str, has_fusion: bool) -> None:
    model = small(name)
    assert (model.fusion is not None) == has_fusion
    has_gc = any(n.endswith(".gc") for n, _ in model.named_modules())
    assert has_gc == (not name.startswith("p3d"))


def test_blocks_interleave_a_b_c() -> None:
    model = build_model("p3d_r50", NUM_CLASSES)
    kinds = [m.unit.kind for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for m in layer]
    assert len(kinds) == 16
    assert kinds[:6] == ["A", "B", "C", "A", "B", "C"]


# --- BatchNorm freezing ------------------------------------------------------


def _frozen(bn: nn.Module) -> bool:
    return not bn.training and not any(p.requires_grad for p in bn.parameters())


@pytest.mark.parametrize("name", ["dg_p3d_tiny", "r2plus1d_18"])
def test_bn_freeze_spares_the_first_and_survives_train(name: str) -> None:
    model = small(name).train()
    layers = bn_layers(model)
    assert set_bn_freeze(model, clip_length=16, threshold=16) is True
    for _ in range(2):  # a wrapper's train() recurses into ours
        nn.Sequential(model).train()
        assert layers[0].training and all(p.requires_grad for p in layers[0].parameters())
        assert all(_frozen(bn) for bn in layers[1:])
    model.eval()
    model.train()
    assert all(_frozen(bn) for bn in layers[1:])
    # frozen layers keep their statistics and get no gradient; the first still learns
    before = [bn.running_mean.clone() for bn in layers]
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    assert not torch.equal(layers[0].running_mean, before[0])
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip(layers[1:], before[1:]))
    assert all(bn.weight.grad is None for bn in layers[1:]) and layers[0].weight.grad is not None

    assert set_bn_freeze(model, clip_length=8, threshold=16) is False
    assert all(bn.training and all(p.requires_grad for p in bn.parameters()) for bn in layers)
    model.eval()
    set_bn_freeze(model, clip_length=8, threshold=16)  # unfreezing follows the model's mode
    assert not any(bn.training for bn in layers)


def test_bn_freeze_needs_a_registry_model() -> None:
    with pytest.raises(OpplanError, match="build_model"):
        set_bn_freeze(nn.Sequential(nn.BatchNorm3d(3)), 64, 64)


# --- building from names and params -----------------------------------------------


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(OpplanError, match="known models: .*dg_p3d_tiny"):
        build_model("dg_p3d_r18", NUM_CLASSES)


@pytest.mark.parametrize("name,params,match", [
    ("r3d_18", {"width": 16}, "width 64"),
    ("dg_p3d_r50", {"depth": 101}, "depth 50"),
    ("dg_p3d_tiny", {"depth": 34}, "depth must be one of"),
    ("dg_p3d_tiny", {"colour": 1}, "unknown parameter"),
])
def test_bad_params_are_user_errors(name: str, params: dict, match: str) -> None:
    with pytest.raises(OpplanError, match=match):
        build_model(name, NUM_CLASSES, **params)


def test_width_and_depth_from_params() -> None:
    model = build_model_from_params(ModelParams(name="g_p3d_tiny", width=8, depth=10, dropout=0.2), NUM_CLASSES)
    assert isinstance(model, P3DResNet)
    assert (model.cfg.width, model.cfg.depth, model.cfg.dropout) == (8, 10, 0.2)
    assert model.stem.conv.out_channels == 8
    default = build_model_from_params(ModelParams(name="dg_p3d_tiny"), NUM_CLASSES)
    assert (default.cfg.width, default.cfg.depth) == (16, 14)  # null: the model's own


def test_init_must_be_imagenet_path() -> None:
    with pytest.raises(OpplanError, match="imagenet:PATH"):
        build_model_from_params(ModelParams(name="p3d_tiny", init="kinetics:/x.pt"), NUM_CLASSES)
