"""The training recipe (docs/fidelity.md): loss terms per head, the optimizer (Nesterov,
no weight decay on the fusion), gradient clipping, learning rates per clip length."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import tiny_config
from torch import nn

from opplan.config import Params, TrainParams
from opplan.models import build_model
from opplan.planning.graph import State
from opplan.train.loop import train_epoch
from opplan.train.objective import Objective, head_loss_terms, make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 5


def dual(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("dg_p3d_tiny", CLASSES, width=8, dropout=0.0)


def batches(n: int = 2, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 3, 4, 32, 32, generator=g), torch.randint(0, CLASSES, (size,), generator=g))
            for _ in range(n)]


# --- loss terms --------------------------------------------------------------------


def test_loss_terms_per_mode() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3, CLASSES), torch.randint(0, CLASSES, (6,))

    def ce(index: int) -> torch.Tensor:
        return nn.functional.cross_entropy(logits[:, index], labels, reduction="sum")

    fused = head_loss_terms(logits, labels, "fused")
    per_head = head_loss_terms(logits, labels, "per_head")
    both = head_loss_terms(logits, labels, "per_head+fused")
    assert set(fused) == {"fused"} and set(per_head) == {"temporal", "spatial"} and set(both) == set(fused) | set(per_head)
    torch.testing.assert_close(fused["fused"], ce(2))
    torch.testing.assert_close(per_head["temporal"], ce(0))
    torch.testing.assert_close(per_head["spatial"], ce(1))
    torch.testing.assert_close(sum(both.values()), ce(0) + ce(1) + ce(2))
    # a single head has one term whatever the mode
    single = head_loss_terms(logits[:, :1], labels, "per_head+fused")
    assert list(single) == ["fused"]
    torch.testing.assert_close(single["fused"], ce(0))
    with pytest.raises(ValueError, match="head_loss"):
        head_loss_terms(logits, labels, "mean")


def test_objective_loss_is_the_sum_of_its_terms_through_the_model() -> None:
    model = dual().eval()
    clip, label = batches(1)[0]
    with torch.no_grad():
        heads = model(clip, heads=True)
        for mode in ("fused", "per_head", "per_head+fused"):
            expected = sum(head_loss_terms(heads, label, mode).values())
            torch.testing.assert_close(Objective(mode).loss(model, clip, label), expected)


# --- optimizer -----------------------------------------------------------------------


def test_optimizer_groups_nesterov_and_no_decay_on_the_fusion() -> None:
    model = dual()
    train = TrainParams(nesterov=True, weight_decay=1e-4, head_loss="per_head+fused")
    optimizer = make_optimizer(model, 0.1, train)
    body, fusion = optimizer.param_groups
    assert fusion["params"] == [model.fusion] and fusion["weight_decay"] == 0.0
    assert body["weight_decay"] == 1e-4 and all(p is not model.fusion for p in body["params"])
    assert body["nesterov"] and body["lr"] == 0.1
    assert len(body["params"]) + 1 == sum(1 for p in model.parameters() if p.requires_grad)
    assert not make_optimizer(dual(), 0.1, TrainParams()).param_groups[0]["nesterov"]
    single = build_model("g_p3d_tiny", CLASSES, width=8)
    assert len(make_optimizer(single, 0.1, train).param_groups) == 1


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(ValueError, match="Nesterov"):
        TrainParams(momentum=0.0, nesterov=True)


@pytest.mark.parametrize("mode,fusion_learns", [("fused", True), ("per_head", False), ("per_head+fused", True)])
def test_head_loss_trains_heads_and_fusion_as_asked(mode: str, fusion_learns: bool) -> None:
    """per_head: each head gets its own loss and the fusion stays the heads' average (the
    authors' test-time fusion); the other modes learn the fusion weights."""
    model = dual()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = make_optimizer(model, 0.05, TrainParams(head_loss=mode, weight_decay=0.0))
    train_epoch(model, batches(), optimizer, torch.device("cpu"), objective=Objective(mode))
    after = dict(model.named_parameters())
    assert torch.equal(after["fusion"].detach(), before["fusion"]) != fusion_learns
    assert after["fusion"].requires_grad == fusion_learns
    for head in ("head.fc.weight", "head_spatial.fc.weight"):
        assert not torch.equal(after[head].detach(), before[head])


def test_per_head_gradient_is_the_sum_of_the_heads_cross_entropies() -> None:
    model, twin = dual(), dual()
    clip, label = batches(1)[0]
    model.train()
    twin.train()
    (Objective("per_head").loss(model, clip, label) / len(label)).backward()
    heads = twin(clip, heads=True)
    loss = nn.functional.cross_entropy(heads[:, 0], label) + nn.functional.cross_entropy(heads[:, 1], label)
    loss.backward()  # the authors' criterion(score[0]) + criterion(score[1])
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if name != "fusion":
            torch.testing.assert_close(p.grad, q.grad, msg=name)


# --- gradient clipping ---------------------------------------------------------------


def test_clip_gradients_caps_the_global_norm() -> None:
    layer = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for p in layer.parameters():
        p.grad = torch.full_like(p, 30.0)  # norm 30 * sqrt(8) ~ 85
    norm = Objective(clip_grad_norm=40.0).clip_gradients(optimizer, scaler)
    assert float(norm) == pytest.approx(30 * 8 ** 0.5)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in layer.parameters()]))
    assert float(total) == pytest.approx(40.0, rel=1e-5)
    for p in layer.parameters():
        p.grad = torch.full_like(p, 1.0)  # under the cap: untouched
    Objective(clip_grad_norm=40.0).clip_gradients(optimizer, scaler)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in layer.parameters())
    assert Objective().clip_gradients(optimizer, scaler) is None


def test_training_step_uses_the_clipped_gradient() -> None:
    """With a tiny cap, one SGD step (no momentum, no decay) moves the weights by lr * cap."""
    model = dual()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_epoch(model, batches(n=1), optimizer, torch.device("cpu"), objective=Objective(clip_grad_norm=1e-3))
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(torch.linalg.vector_norm(step)) == pytest.approx(1e-3, rel=1e-3)


# --- learning rate per clip length ---------------------------------------------------


def test_rate_factor_per_clip_length() -> None:
    train = TrainParams(lr_factor_per_length={64: 0.1})
    assert train.lr_for(64, 0.01) == pytest.approx(0.001)
    assert train.lr_for(32, 0.01) == 0.01


def test_transition_trains_at_the_factored_rate(tiny_shards: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A state (cs, 8, 0.02) with factor 0.5 at length 8 steps with 0.01; length 4 keeps 0.02."""
    from opplan.train import transition
    from opplan.train.setup import TrainSetup

    params = Params.model_validate(tiny_config(
        tiny_shards, train={"lr_factor_per_length": {8: 0.5}}, plan={"max_epochs": 1, "delay": 1}))
    setup = TrainSetup(params, tiny_shards)
    seen: list[float] = []

    def spy(model, loader, optimizer, *args, **kwargs):  # noqa: ANN001, ANN202 - train_epoch's signature
        seen.append(optimizer.param_groups[0]["lr"])
        return real(model, loader, optimizer, *args, **kwargs)

    from opplan.train import setup as setup_module

    real = setup_module.train_epoch
    monkeypatch.setattr(setup_module, "train_epoch", spy)
    for length in (4, 8):
        transition.train_transition(setup, State("cs", length, 0.02), None, tmp_path / str(length))
    assert seen == [pytest.approx(0.02), pytest.approx(0.01)]


def test_schedule_trains_each_epoch_at_its_factored_rate(tiny_shards: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The final retrain and the baselines go through train_schedule: same factors."""
    from opplan.train import setup as setup_module
    from opplan.train.schedule import ScheduledEpoch, train_schedule
    from opplan.train.setup import TrainSetup

    params = Params.model_validate(tiny_config(tiny_shards, train={"lr_factor_per_length": {8: 0.5}}))
    seen: list[float] = []
    real = setup_module.train_epoch

    def spy(model, loader, optimizer, *args, **kwargs):  # noqa: ANN001, ANN202 - train_epoch's signature
        seen.append(optimizer.param_groups[0]["lr"])
        return real(model, loader, optimizer, *args, **kwargs)

    monkeypatch.setattr(setup_module, "train_epoch", spy)
    schedule = [ScheduledEpoch(State("cs", 4, 0.02), 0.02, 0), ScheduledEpoch(State("cs", 8, 0.02), 0.02, 1)]
    assert train_schedule(TrainSetup(params, tiny_shards), schedule, tmp_path).status == "finished"
    assert seen == [pytest.approx(0.02), pytest.approx(0.01)]
