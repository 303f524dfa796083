"""``plan.workers``: the tiny planning with 2 worker processes equals the one in sequence,
and the number of workers is not part of the planning configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny import tiny_config

from opplan import tracking as t
from opplan.config import Params
from opplan.data.shards import write_checksums
from opplan.params_file import dump_params
from opplan.planning.graph import graph_from_params
from opplan.stages.common import config_hash, planning_config
from opplan.stages.plan import run_plan

ENV = {k: v for k, v in os.environ.items() if k != t.ENV_URI} | {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RECORD_KEYS = ("src", "dst", "status", "score", "fitted", "observed", "chosen_epoch", "epochs_trained")


def tiny_params(shards: Path, *, workers: int) -> Params:
    """test_stages.py's tiny configuration on the extended graph: after S0's two edges,
    cs/4/0.02 has two out-edges that run side by side."""
    return Params.model_validate(tiny_config(shards, plan={"graph": "extended", "workers": workers},
                                             tracking={"experiment": "workers"}))


def test_workers_are_not_part_of_the_planning_configuration(tmp_path: Path) -> None:
    (tmp_path / "videos.csv").write_text("index,path\n0,a.avi\n")
    write_checksums(tmp_path, {})
    one, two = (tiny_params(tmp_path, workers=k) for k in (1, 2))
    assert one.plan.workers == 1 and two.plan.workers == 2
    assert planning_config(one, tmp_path) == planning_config(two, tmp_path)
    assert "workers" not in planning_config(two, tmp_path)["plan"]
    assert config_hash(planning_config(one, tmp_path)) == config_hash(planning_config(two, tmp_path))


def test_one_worker_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from opplan.errors import OpplanError
    from opplan.stages.workers import worker_devices

    params = tiny_params(tmp_path, workers=3)
    auto = params.model_copy(update={"device": "auto"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_devices(auto, 3) == ["cpu"] * 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(params, 3) == ["cpu"] * 3  # device: cpu wins over the GPUs
    assert worker_devices(auto, 2) == ["cuda:0", "cuda:1"]
    with pytest.raises(OpplanError, match="plan.workers is 3 but this machine has 2 CUDA device"):
        worker_devices(auto, 3)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def transition_runs(project: Path, params: Params) -> dict[tuple[str, str], object]:
    """The transition runs of the project's store by edge; fails on two runs of one edge."""
    tracker = t.Tracker(f"sqlite:///{project / 'mlflow.db'}", params.tracking.experiment)
    runs = tracker.search({t.TAG_KIND: t.KIND_TRANSITION})
    by_edge = {(r.data.tags[t.TAG_SRC], r.data.tags[t.TAG_DST]): r for r in runs}
    assert len(by_edge) == len(runs)
    return by_edge


def curves(project: Path, params: Params) -> dict[tuple[str, str], list[tuple[int, float]]]:
    tracker = t.Tracker(f"sqlite:///{project / 'mlflow.db'}", params.tracking.experiment)
    return {edge: tracker.history(run.info.run_id, t.M_VAL_ACC)
            for edge, run in transition_runs(project, params).items()}


@pytest.mark.slow
def test_two_workers_plan_what_one_plans(tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         one_thread: None) -> None:
    monkeypatch.delenv(t.ENV_URI, raising=False)
    serial, parallel = tmp_path / "k1", tmp_path / "k2"
    serial.mkdir()
    parallel.mkdir()
    one, two = tiny_params(tiny_shards, workers=1), tiny_params(tiny_shards, workers=2)
    graph = graph_from_params(one.plan)
    edges = {(a.name, b.name) for a, b in graph.edges}

    monkeypatch.chdir(serial)
    started = time.perf_counter()
    run_plan(one)
    seconds_one = time.perf_counter() - started

    (parallel / "params.yaml").write_text(dump_params(two))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "opplan.cli", "plan", "--params", "params.yaml"], cwd=parallel,
                          env=ENV, capture_output=True, text=True, timeout=300)
    seconds_two = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"tiny plan ({len(edges)} transitions): 1 worker in process {seconds_one:.1f}s, "
          f"2 workers as a command {seconds_two:.1f}s (shared machine)")

    # each worker says who it is on every line, and both trained
    assert "planning with 2 worker processes: w0 on cpu, w1 on cpu" in proc.stderr
    for slot in (0, 1):
        assert f"[w{slot}] " in proc.stderr and "1 torch thread(s)" in proc.stderr
    assert {line.split("]")[0] for line in proc.stderr.splitlines() if "epoch 1:" in line} == {"[w0", "[w1"}

    documents = [json.loads((project / "plan.json").read_text()) for project in (serial, parallel)]
    for key in ("config_hash", "path", "epochs", "score", "final_scores", "skipped", "best_predecessor"):
        assert documents[0][key] == documents[1][key], key
    assert [{k: r[k] for k in RECORD_KEYS} for r in documents[0]["explored"]] == [
        {k: r[k] for k in RECORD_KEYS} for r in documents[1]["explored"]]
    assert curves(serial, one) == curves(parallel, two)  # every epoch's val_acc, bit for bit
    runs = transition_runs(parallel, two)
    assert set(runs) == set(transition_runs(serial, one)) == edges  # one run per edge, in both

    # two transitions trained at the same time: their MLflow runs overlap
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans

    # another number of workers is the same planning: nothing is trained again
    monkeypatch.chdir(parallel)
    ended = {edge: r.info.end_time for edge, r in runs.items()}
    again = run_plan(one)
    assert {edge: r.info.end_time for edge, r in transition_runs(parallel, one).items()} == ended
    assert [n.name for n in again.path] == documents[1]["path"]
    assert json.loads((parallel / "plan.json").read_text()) == documents[1]
