"""The training loop's device options on CPU: mixed precision, determinism, memory layout,
compilation, divergence checks without a wait per step, progress in the log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from tiny import tiny_config
from torch import nn

from opplan import device as dev
from opplan.config import Params, TrainParams
from opplan.errors import ParamsError
from opplan.params_file import parse_params
from opplan.progress import PlanProgress, Progress, duration
from opplan.train import loop
from opplan.train.loop import DivergedError, LoopOptions, predict, train_epoch

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """(N, 3, T, H, W) -> (N, 3): a 3D convolution, BatchNorm and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3, 4)))


def batches(n: int = 4, size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 2, 4, 4, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def twins() -> tuple[Tiny, Tiny]:
    torch.manual_seed(0)
    one, two = Tiny(), Tiny()
    two.load_state_dict(one.state_dict())
    return one, two


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    """Parameters only: a non-finite batch's forward moves BatchNorm's running statistics
    before any check can see the loss (a diverged epoch's weights are dropped anyway)."""
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.fixture
def restore_determinism() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=True)
    torch.backends.cudnn.benchmark = before[1]


# --- params ------------------------------------------------------------------------------


@pytest.mark.parametrize(("written", "meant"), [("true", "fp16"), ("false", "off"), ("off", "off"), ("bf16", "bf16"),
                                                ("auto", "auto"), ("fp16", "fp16")])
def test_amp_reads_the_modes_and_the_old_boolean(written: str, meant: str) -> None:
    import yaml

    params = parse_params(yaml.safe_load(f"train:\n  amp: {written}\n"))
    assert params.train.amp == meant


def test_bad_device_options_name_the_key() -> None:
    import yaml

    text = "train:\n  amp: fp8\n  compile: max\n  num_workers: many\n"
    with pytest.raises(ParamsError) as error:
        parse_params(yaml.safe_load(text), source="params.yaml", root=yaml.compose(text))
    message = str(error.value)
    for key, line in (("train.amp", 2), ("train.compile", 3), ("train.num_workers", 4)):
        assert f"params.yaml:{line}: '{key}" in message


def test_switches_read_yaml_booleans() -> None:
    train = TrainParams(channels_last=True, compile=False)
    assert (train.channels_last, train.compile) == ("on", "off")
    assert TrainParams(compile=True).compile == "default"


# --- each option on CPU --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "bf16", "fp16", "off"])
def test_every_amp_mode_falls_back_to_full_precision_on_cpu(mode: str, tiny_shards: Path) -> None:
    from opplan.train.setup import TrainSetup

    assert dev.amp_dtype(mode, CPU) is None
    assert not dev.grad_scaler(dev.amp_dtype(mode, CPU), CPU).is_enabled()
    setup = TrainSetup(Params.model_validate(tiny_config(tiny_shards, train={"amp": mode})), tiny_shards)
    assert setup.amp is False and setup.loop_options.amp is None and not setup.grad_scaler().is_enabled()
    assert setup.optimizer(nn.Linear(2, 2), 0.1).defaults["fused"] is None  # CPU: the unfused SGD of before


def test_amp_modes_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    assert dev.amp_dtype("off", cuda) is None
    assert dev.amp_dtype("bf16", cuda) is torch.bfloat16 and dev.amp_dtype("fp16", cuda) is torch.float16
    for supported, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert dev.amp_dtype("auto", cuda) is dtype


@pytest.mark.parametrize("deterministic", [True, False])
def test_determinism_switch(deterministic: bool, tiny_shards: Path, restore_determinism: None) -> None:
    from opplan.train.setup import TrainSetup

    TrainSetup(Params.model_validate(tiny_config(tiny_shards, train={"deterministic": deterministic})), tiny_shards)
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    assert torch.backends.cudnn.benchmark is not deterministic
    # CPU kernels are deterministic either way: the same epoch twice, the same weights.
    one, two = twins()
    for model in (one, two):
        train_epoch(model, batches(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), CPU)
    assert same_weights(one, two)


def test_channels_last_and_compile_are_cuda_only_and_auto_follows_the_measurements() -> None:
    cuda = torch.device("cuda")
    assert not dev.use_channels_last("on", "r3d_18", CPU)
    assert dev.use_channels_last("auto", "r3d_18", cuda) and dev.use_channels_last("on", "dg_p3d_r50", cuda)
    assert not dev.use_channels_last("auto", "dg_p3d_r50", cuda) and not dev.use_channels_last("off", "r3d_18", cuda)
    model = Tiny()
    assert dev.compile_model(model, "reduce-overhead", CPU) is model and not dev.uses_cudagraphs(model)
    assert type(model.forward) is type(Tiny().forward)  # not compiled


def test_channels_last_inputs_give_the_same_training(restore_determinism: None) -> None:
    one, two = twins()
    two.to(memory_format=torch.channels_last_3d)
    results = []
    for model, layout in ((one, False), (two, True)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        results.append(train_epoch(model, batches(), optimizer, CPU, options=LoopOptions(channels_last=layout)))
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-5)
    for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_under_cuda_graphs_each_forward_starts_a_step_and_its_output_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model = Tiny()
    outputs = []
    real_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: outputs.append(real_forward(x)) or outputs[-1])
    setattr(model, dev.CUDAGRAPHS_ATTR, True)
    data = batches(n=3)
    train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1), CPU, micro_batch=2)
    assert len(marks) == 6  # 3 batches x 2 micro-batches
    seen = []
    monkeypatch.setattr(loop, "compute_loss", lambda m, c, y, *_: seen.append(loop._forward(m, c)) or seen[-1].sum())
    marks.clear()
    train_epoch(model, data[:1], torch.optim.SGD(model.parameters(), lr=0.1), CPU)
    assert len(marks) == 1 and seen[0].data_ptr() != outputs[-1].data_ptr()  # a copy, not the graph's memory
    heads = loop._cloned({"fused": outputs[-1], "per_head": (outputs[-1], outputs[-1])})  # a dual head's outputs
    assert all(t.data_ptr() != outputs[-1].data_ptr() for t in (heads["fused"], *heads["per_head"]))
    assert torch.equal(heads["fused"], outputs[-1])


# --- divergence without a wait per step ----------------------------------------------------


def poisoned(n: int, bad: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = batches(n)
    data[bad][0][0, 0, 0, 0, 0] = float("nan")
    return data


def test_unfused_divergence_is_caught_before_the_step_as_before() -> None:
    one, two = twins()
    data = poisoned(4, bad=2)
    with pytest.raises(DivergedError, match=r"training loss became nan after 8 clips"):
        train_epoch(one, data, torch.optim.SGD(one.parameters(), lr=0.1), CPU)
    train_epoch(two, data[:2], torch.optim.SGD(two.parameters(), lr=0.1), CPU)
    assert same_parameters(one, two)


def test_fused_optimizer_skips_a_non_finite_step_on_the_device_and_reads_back_every_k(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    real_check = loop._Losses.check
    monkeypatch.setattr(loop._Losses, "check", lambda self: reads.append(len(self.pending)) or real_check(self))
    one, two = twins()
    data = poisoned(7, bad=3)
    fused = torch.optim.SGD(one.parameters(), lr=0.1, momentum=0.9, fused=True)
    with pytest.raises(DivergedError, match=r"training loss became nan after 12 clips"):
        train_epoch(one, data, fused, CPU, options=LoopOptions(check_every=5))
    # The first step is read back before it is applied (see loop._skips_on_device), then
    # batches 2-6 together before batch 6's step, which raises: the bad batch 4 was skipped
    # on the device, 2, 3 and 5 were applied.
    assert reads == [1, 5]
    reference = torch.optim.SGD(two.parameters(), lr=0.1, momentum=0.9)
    train_epoch(two, data[:3] + data[4:5], reference, CPU)
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_fused_optimizer_resumed_from_an_unfused_state_checks_every_step() -> None:
    model = Tiny()
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_epoch(model, batches(1), saved, CPU)
    fused = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    assert loop._skips_on_device(fused)
    fused.load_state_dict(saved.state_dict())  # as a resumed epoch state does
    assert not loop._skips_on_device(fused)
    train_epoch(model, batches(2), fused, CPU)  # no found_inf for the unfused kernel


def test_the_epoch_loss_is_the_same_read_back_every_k_or_every_step() -> None:
    one, two = twins()
    data = batches(6)
    every = train_epoch(one, data, torch.optim.SGD(one.parameters(), lr=0.1, momentum=0.9, fused=True), CPU,
                        options=LoopOptions(check_every=4))
    each = train_epoch(two, data, torch.optim.SGD(two.parameters(), lr=0.1, momentum=0.9, fused=True), CPU,
                       options=LoopOptions(check_every=1))
    assert every.clips == each.clips == 24 and every.loss == each.loss


# --- predict ---------------------------------------------------------------------------------


def test_predict_averages_the_softmax_of_the_views() -> None:
    model = Tiny().eval()
    clips = torch.randn(2, 3, 3, 2, 4, 4)  # 2 videos x 3 views
    scores, labels = predict(model, [(clips, torch.tensor([1, 2]))], CPU)
    expected = model(clips.flatten(0, 1)).softmax(dim=1).view(2, 3, -1).mean(dim=1)
    torch.testing.assert_close(torch.from_numpy(scores), expected.detach(), rtol=0, atol=0)
    assert labels.tolist() == [1, 2]


# --- progress --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pass_progress_is_rate_limited_and_says_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    meter = Progress("cs/8/0.01 epoch 3: training ", total=1000, every=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="opplan.progress"):
        for _ in range(10):
            clock.now += 10
            meter.update(20)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["cs/8/0.01 epoch 3: training 120/1000 clips (12 %), 2.0 clips/s, ETA 7m20s"]
    assert Progress("", None, None).line(0.0).endswith("elapsed")


def test_progress_of_a_resumed_run_rates_only_the_new_work_and_logs_the_last_item(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    meter = Progress("prepare: decoded ", total=100, every=15, unit="videos", done=90, at_end=True, clock=clock)
    with caplog.at_level(logging.INFO, logger="opplan.progress"):
        for _ in range(10):
            clock.now += 1
            meter.update(1)
    assert [r.getMessage() for r in caplog.records] == [
        "prepare: decoded 100/100 videos (100 %), 1.0 videos/s, ETA 0s"]


def test_train_epoch_logs_progress_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    model = Tiny()
    with caplog.at_level(logging.INFO, logger="opplan.progress"):
        train_epoch(model, batches(3), torch.optim.SGD(model.parameters(), lr=0.1), CPU, progress="x epoch 1: ",
                    options=LoopOptions(progress_seconds=0))
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [f"x epoch 1: training {4 * k} clips"
                                                                      for k in (1, 2, 3)]


def test_plan_progress_counts_transitions_also_from_futures(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = PlanProgress(total=3, clock=clock)
    run = progress.wrap(lambda src, dst, record: f"{src}->{dst}")
    future: Future[str] = Future()
    submit = progress.wrap(lambda src, dst, record: future)
    with caplog.at_level(logging.INFO, logger="opplan.progress"):
        assert run("S0", "a", None) == "S0->a"
        clock.now += 75
        assert submit("a", "b", None) is future
        assert len(caplog.records) == 1
        future.set_result("done")
    assert [r.getMessage() for r in caplog.records] == ["planning: transition 1 of 3 done (S0 → a), 0s elapsed",
                                                        "planning: transition 2 of 3 done (a → b), 1m15s elapsed, "
                                                        "about 38s left at this rate"]
    assert (duration(3725), duration(59.6)) == ("1h02m", "1m00s")


# --- loader workers ------------------------------------------------------------------------------


def test_auto_workers_from_the_cores_per_device() -> None:
    cuda = torch.device("cuda")
    assert dev.auto_workers(cuda, 1, cores=16) == 8  # capped where more were slower
    assert dev.auto_workers(cuda, 4, cores=16) == 3
    assert dev.auto_workers(cuda, 8, cores=4) == 0
    assert dev.auto_workers(CPU, 1, cores=2) == 0 and dev.auto_workers(CPU, 1, cores=64) == 4


def test_the_setup_reuses_its_loader_within_a_state_and_gives_todays_clips(tiny_shards: Path) -> None:
    import pickle

    from opplan.planning.graph import State
    from opplan.train.setup import TrainSetup

    setup = TrainSetup(Params.model_validate(tiny_config(tiny_shards, runtime={"num_workers": 1})), tiny_shards)
    state, other = State("cs", 4, 0.02), State("cs", 8, 0.02)
    first = setup.loader("train", state, mode="train", seed=3)
    assert setup.loader("train", state, mode="train", seed=4) is first
    assert setup.loader("val", state, mode="val") is not first
    assert setup.loader("train", other, mode="train", seed=4) is not first
    assert pickle.loads(pickle.dumps(setup))._loaders == {}  # what a distributed collective call sends


def test_epochs_through_a_persistent_loader_train_exactly_as_without_workers(tiny_shards: Path) -> None:
    from opplan.planning.graph import State
    from opplan.train.setup import TrainSetup

    state = State("cs", 4, 0.02)
    runs = []
    for workers in (0, 1):
        setup = TrainSetup(Params.model_validate(tiny_config(tiny_shards, runtime={"num_workers": workers})),
                           tiny_shards)
        model = setup.new_model(state.clip_length)
        optimizer, scaler = setup.optimizer(model, state.lr), setup.grad_scaler()
        losses = [setup.train_epoch(model, state, optimizer, scaler, seed=seed).loss for seed in (7, 8, 9)]
        runs.append((losses, model, setup.accuracy(model, state)))
        setup.close_loaders()
    assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2]
    assert same_weights(runs[0][1], runs[1][1])
