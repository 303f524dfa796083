"""Data-parallel training under torchrun (gloo on CPU) against one process.

Two processes with per-process batch b train exactly as one process with batch 2b split
into two micro-batches (gradient accumulation; BatchNorm running statistics from the
first part in both), so with dropout off the curves must agree up to floating-point noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import tiny_config, with_current_hash
from torch import nn

from opplan import distributed
from opplan import tracking as t
from opplan.config import Params
from opplan.errors import OpplanError
from opplan.train.loop import train_epoch

ROOT = Path(__file__).resolve().parent.parent


def tiny(shards: Path, **train: object) -> dict:
    """test_stages.py's tiny configuration without dropout, BatchNorm frozen at length 8, one rate."""
    return tiny_config(shards, model={"dropout": 0.0, "bn_freeze_min_length": 8},
                       train={"eval_batch_size": 3, **train}, plan={"lrs": [0.02], "delay": 2, "max_epochs": 4},
                       baselines={"decays": ["step"], "epochs": [3]}, tracking={"experiment": "ddp"})


def write_project(folder: Path, params: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


def histories(project: Path, experiment: str, kind: str, key: str) -> dict[str, list[tuple[int, float]]]:
    tracker = t.Tracker(f"sqlite:///{project / 'mlflow.db'}", experiment, artifact_root=project / "mlartifacts")
    runs = tracker.search({t.TAG_KIND: kind})
    return {r.info.run_name: tracker.history(r.info.run_id, key) for r in runs}


def assert_same_curves(one: dict, two: dict, *, rtol: float = 0.0) -> None:
    assert one.keys() == two.keys()
    for name in one:
        steps_one, values_one = zip(*one[name])
        steps_two, values_two = zip(*two[name])
        assert steps_one == steps_two, name
        np.testing.assert_allclose(values_two, values_one, rtol=rtol, atol=1e-6 if rtol else 0, err_msg=name)


@pytest.mark.slow
def test_plan_under_torchrun_matches_one_process(tiny_shards: Path, tmp_path: Path, one_torch_thread: None) -> None:
    from opplan.stages.plan import run_plan

    alone = tmp_path / "alone"
    write_project(alone, tiny(tiny_shards, micro_batch_per_length={4: 2, 8: 2}))
    cwd = Path.cwd()
    os.chdir(alone)
    try:
        run_plan(Params.model_validate(tiny(tiny_shards, micro_batch_per_length={4: 2, 8: 2})))
    finally:
        os.chdir(cwd)

    # Asked for in params: `opplan plan` relaunches itself under torchrun with 2 processes.
    ddp = tmp_path / "ddp"
    params = write_project(ddp, {**tiny(tiny_shards), "distributed": {"nproc_per_node": 2}})
    log = run([sys.executable, "-m", "opplan.cli", "plan", "--params", str(params)], ddp)
    assert "relaunching as -m torch.distributed.run --standalone --nproc-per-node=2" in log
    assert "distributed: 2 processes (gloo)" in log

    plan_alone = json.loads((alone / "plan.json").read_text())
    plan_ddp = json.loads((ddp / "plan.json").read_text())
    assert plan_ddp["path"] == plan_alone["path"] and plan_ddp["epochs"] == plan_alone["epochs"]
    for a, b in zip(plan_alone["explored"], plan_ddp["explored"], strict=True):
        assert (b["src"], b["dst"], b["chosen_epoch"], b["epochs_trained"]) == (
            a["src"], a["dst"], a["chosen_epoch"], a["epochs_trained"])
        assert b["score"] == pytest.approx(a["score"], abs=1e-6)
    # Validation curves equal (accuracies are counts of videos); losses up to summation order.
    assert_same_curves(histories(alone, "ddp", t.KIND_TRANSITION, t.M_VAL_ACC),
                       histories(ddp, "ddp", t.KIND_TRANSITION, t.M_VAL_ACC))
    assert_same_curves(histories(alone, "ddp", t.KIND_TRANSITION, t.M_TRAIN_LOSS),
                       histories(ddp, "ddp", t.KIND_TRANSITION, t.M_TRAIN_LOSS), rtol=1e-5)
    # One MLflow run per edge, all from rank 0: the planning run and its 3 transitions.
    tracker = t.Tracker("sqlite:///" + str(ddp / "mlflow.db"), "ddp", artifact_root=ddp / "mlartifacts")
    assert len(tracker.search({t.TAG_KIND: t.KIND_PLANNING})) == 1
    runs = tracker.search({t.TAG_KIND: t.KIND_TRANSITION})
    assert sorted(r.info.run_name.removeprefix(t.PATH_MARK) for r in runs) == sorted(e["dst"] + " ← " + e["src"] for e in plan_ddp["explored"])
    assert all(r.data.tags[t.TAG_STATUS] == t.STATUS_FINISHED for r in runs)


DRIVER = """
import sys
from opplan import distributed
from opplan.params_file import load_params
from opplan.stages.baselines import run_baselines
from opplan.stages.evaluate import run_evaluate
from opplan.stages.final import run_final

params = load_params(sys.argv[1])
distributed.init(params)
distributed.run(lambda: (run_final(params), run_evaluate(params), run_baselines(params)))
"""


@pytest.mark.slow
def test_final_evaluate_and_baselines_under_torchrun_match_one_process(
        tiny_shards: Path, tmp_path: Path, one_torch_thread: None) -> None:
    """The schedule trainer (BatchNorm freezing between segments, optimizer resets) and the
    sharded multi-view evaluation, on a fixed plan."""
    from opplan.stages.baselines import run_baselines
    from opplan.stages.evaluate import run_evaluate
    from opplan.stages.final import run_final

    plan = {"config_hash": "fixed", "mlflow": {"planning_run_id": "none"}, "path": ["S0", "cs/4/0.02", "cs/8/0.02"],
            "final_state": "cs/8/0.02", "transitions": [{"dst": "cs/4/0.02", "chosen_epoch": 2},
                                                        {"dst": "cs/8/0.02", "chosen_epoch": 2}]}
    alone, ddp = tmp_path / "alone", tmp_path / "ddp"
    for folder, config in ((alone, tiny(tiny_shards, micro_batch_per_length={4: 2, 8: 2})), (ddp, tiny(tiny_shards))):
        write_project(folder, config)
        (folder / "plan.json").write_text(json.dumps(with_current_hash(plan, Params.model_validate(config))))

    cwd = Path.cwd()
    os.chdir(alone)
    try:
        params = Params.model_validate(tiny(tiny_shards, micro_batch_per_length={4: 2, 8: 2}))
        run_final(params), run_evaluate(params), run_baselines(params)
    finally:
        os.chdir(cwd)
    (ddp / "driver.py").write_text(DRIVER)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "driver.py",
         "params.yaml"], ddp)

    final_alone = json.loads((alone / "final/run.json").read_text())
    final_ddp = json.loads((ddp / "final/run.json").read_text())
    assert final_ddp["schedule"] == final_alone["schedule"]
    np.testing.assert_allclose(final_ddp["losses"], final_alone["losses"], rtol=1e-5)
    metrics_alone = json.loads((alone / "metrics.json").read_text())
    metrics_ddp = json.loads((ddp / "metrics.json").read_text())
    for key in ("top1", "top5", "mean_class_acc", "single_view_top1"):
        assert metrics_ddp[key] == pytest.approx(metrics_alone[key], abs=1e-6), key
    baselines_alone = json.loads((alone / "baselines.json").read_text())["candidates"]
    baselines_ddp = json.loads((ddp / "baselines.json").read_text())["candidates"]
    assert [(c["name"], c["status"], c["top1"]) for c in baselines_ddp] == [
        (c["name"], c["status"], c["top1"]) for c in baselines_alone]
    assert_same_curves(histories(alone, "ddp-baselines", t.KIND_BASELINE, t.M_TRAIN_LOSS),
                       histories(ddp, "ddp-baselines", t.KIND_BASELINE, t.M_TRAIN_LOSS), rtol=1e-5)


# --- one process: accumulation, AMP switch, launch and set-up checks ---------------------------


class Flat(nn.Module):
    """A BatchNorm model small enough to check gradients by hand: (N, 3, T, H, W) -> (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x.mean(dim=(3, 4)).flatten(1)))


def batches(n: int = 3, size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 3, 2, 4, 4, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def test_micro_batches_accumulate_the_batch_gradient_and_move_running_stats_once_per_step() -> None:
    torch.manual_seed(0)
    model = Flat()
    data = batches(n=1)
    clip, label = data[0]
    # Reference gradient: the mean loss of the two strided parts as one process would weigh them,
    # with each part normalised by its own BatchNorm batch.
    reference = Flat()
    reference.load_state_dict(model.state_dict())
    loss = sum(nn.functional.cross_entropy(reference(clip[m::2]), label[m::2], reduction="sum") for m in range(2)) / 6
    loss.backward()
    expected = {k: p.grad.clone() for k, p in reference.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights, grads checked
    grads = {}
    optimizer.step = lambda: grads.update({k: p.grad.clone() for k, p in model.named_parameters()})  # type: ignore
    before = model.bn.running_mean.clone()
    result = train_epoch(model, data, optimizer, torch.device("cpu"), micro_batch=3)
    for key, grad in expected.items():
        torch.testing.assert_close(grads[key], grad)
    assert result.clips == 6 and result.loss == pytest.approx(loss.item(), rel=1e-6)
    # Running statistics moved once, by the first part (clips 0, 2, 4), as without accumulation.
    first_part = clip[0::2].mean(dim=(3, 4)).flatten(1)
    torch.testing.assert_close(model.bn.running_mean, 0.9 * before + 0.1 * first_part.mean(dim=0))
    assert int(model.bn.num_batches_tracked) == 1


def test_without_micro_batches_the_epoch_is_plain_sgd_on_the_batch_mean() -> None:
    torch.manual_seed(0)
    model, twin = Flat(), Flat()
    twin.load_state_dict(model.state_dict())
    data = batches()
    train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    twin.train()
    for clip, label in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(twin(clip), label).backward()
        optimizer.step()
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_mixed_precision_is_off_on_cpu(tiny_shards: Path) -> None:
    from opplan.train.setup import TrainSetup

    setup = TrainSetup(Params.model_validate(tiny(tiny_shards, amp=True)), tiny_shards)
    assert setup.device.type == "cpu" and setup.amp is False and not setup.grad_scaler().is_enabled()


def test_a_stage_relaunches_itself_under_torchrun_when_params_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(argv))
    for key in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    distributed.relaunch_if_asked(Params.model_validate({}), ["pipeline/plan.py", "params.yaml"])
    assert calls == []  # one process: nothing to do
    params = Params.model_validate({"distributed": {"nproc_per_node": 4}})
    distributed.relaunch_if_asked(params, ["pipeline/plan.py", "params.yaml"])
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                      "pipeline/plan.py", "params.yaml"]]
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    distributed.relaunch_if_asked(params, ["pipeline/plan.py", "params.yaml"])
    assert len(calls) == 1  # already under torchrun: stays


@pytest.mark.parametrize(("params", "message"), [
    ({"train": {"batch_size": 6}}, "train.batch_size is 6, which 4 processes cannot share evenly"),
    ({"train": {"batch_size_per_length": {64: 2}}}, "train.batch_size_per_length[64] is 2"),
])
def test_distributed_set_up_refuses_what_cannot_work(params: dict, message: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(OpplanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        distributed.init(Params.model_validate(params))
    assert not distributed.world().enabled


def test_planning_workers_and_distributed_training_do_not_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    from opplan.stages.plan import run_plan

    monkeypatch.setattr(distributed, "_world", distributed.World(rank=0, size=2))
    with pytest.raises(OpplanError, match="use either planning workers or distributed training, not both"):
        run_plan(Params.model_validate({"plan": {"workers": 2}}))
