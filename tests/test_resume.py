"""Damage done for real to ``opplan plan`` and ``opplan final`` in subprocesses.

- SIGKILL at moments observed from outside (an epoch in progress, a checkpoint being
  written, between two transitions), the work folder of the interrupted transition
  wiped, then the same command rerun: the result must equal an undisturbed run's;
- two ``opplan plan`` started at once on one project: one refuses (exit 2);
- the same planning in two project folders: the same path, epochs, scores and losses.

A moment is caught by freezing the process (SIGSTOP), looking at its files, and either
killing it (SIGKILL: what was seen is exactly what it left) or letting it go on (SIGCONT).
No test hook in the production code is involved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny import tiny_config, with_current_hash

from opplan import tracking as t
from opplan.config import Params
from opplan.params_file import dump_params, load_params
from opplan.report.collect import read_store
from opplan.report.compare import planning_cost

pytestmark = pytest.mark.slow

MAX_EPOCHS = 3
ENV = {k: v for k, v in os.environ.items() if k != t.ENV_URI} | {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
EPOCH_LINE = re.compile(r"INFO opplan\.train\.transition: (.+ → \S+) epoch (\d+): loss")
# A hand-written plan for ``final``: 5 epochs in 3 segments, BN frozen from clip length 8 on.
FINAL_PLAN = {
    "config_hash": "0123456789abcdef", "mlflow": {"planning_run_id": "plan-of-test-resume"},
    "path": ["S0", "cs/4/0.02", "cs/8/0.02", "cs/8/0.002"], "final_state": "cs/8/0.002",
    "transitions": [{"src": "S0", "dst": "cs/4/0.02", "chosen_epoch": 2},
                    {"src": "cs/4/0.02", "dst": "cs/8/0.02", "chosen_epoch": 2},
                    {"src": "cs/8/0.02", "dst": "cs/8/0.002", "chosen_epoch": 1}],
}


def make_project(root: Path, shards: Path) -> Path:
    """A project folder with the tiny planning config (1 sampling, 2 lengths x 2 rates)."""
    root.mkdir(parents=True)
    params = Params.model_validate(tiny_config(shards, model={"bn_freeze_min_length": 8},
                                               plan={"max_epochs": MAX_EPOCHS}, tracking={"experiment": "resume"}))
    (root / "params.yaml").write_text(dump_params(params))
    return root


class Launch:
    """``python -m opplan.cli <command>`` running in ``project``, its output in a log file."""

    def __init__(self, project: Path, command: str, name: str) -> None:
        self.project, self.log_path = project, project / f"{name}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "opplan.cli", command, "--params", "params.yaml"],
                                         cwd=project, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout)

    def finish(self) -> None:
        assert self.wait() == 0, self.log


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def kill_when(launch: Launch, moment: Callable[[], Any], *, every: float = 0.01, timeout: float = 180) -> Any:
    """SIGKILL ``launch`` at the first moment ``moment()`` is truthy; return what it saw.

    ``moment`` only ever looks at a frozen process, so what it saw is what the killed
    process left behind; it looks ``every`` seconds of the process running.
    """
    pid, deadline = launch.proc.pid, time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launch.proc.poll() is None, f"exited before the moment:\n{launch.log}"
        os.kill(pid, signal.SIGSTOP)
        while _state(pid) not in ("T", "t", "Z"):
            time.sleep(0.0002)
        seen = moment()
        if seen:
            os.kill(pid, signal.SIGKILL)
            launch.wait()
            return seen
        os.kill(pid, signal.SIGCONT)
        time.sleep(every)
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f"the moment never came:\n{launch.log}")


def work_dirs(project: Path, kind: str = "transitions") -> list[Path]:
    root = project / ".opplan" / "work"
    pattern = f"*/{kind}/*" if kind == "transitions" else f"{kind}/*"
    return sorted(p for p in root.glob(pattern) if p.is_dir())


def epoch_files(work: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in work.glob("epoch_*.pt"))


def new_tmp_files(project: Path, kind: str) -> Callable[[], list[Path]]:
    """A moment: the temporary file of an epoch state being written (not one a kill left before)."""
    def tmp_files() -> list[Path]:
        return [p for w in work_dirs(project, kind) for p in w.glob(".epoch_*.tmp")]

    old = set(tmp_files())
    return lambda: [p for p in tmp_files() if p not in old]


def epoch_of(tmp: Path) -> int:
    """``.epoch_007.pt.abc.tmp`` -> 7."""
    return int(tmp.name.split(".")[1].split("_")[1])


def tracker(project: Path) -> t.Tracker:
    return t.Tracker(f"sqlite:///{project / 'mlflow.db'}", "resume")


def plan_summary(project: Path) -> dict[str, Any]:
    """What must not depend on interruptions: path, epochs, scores, and every loss trained."""
    doc = json.loads((project / "plan.json").read_text())
    keys = ("src", "dst", "status", "score", "fitted", "observed", "chosen_epoch", "epochs_trained")
    store = tracker(project)
    losses = {(r["src"], r["dst"]): store.history(r["run_id"], t.M_TRAIN_LOSS) for r in doc["explored"]}
    return {"path": doc["path"], "epochs": doc["epochs"], "score": doc["score"],
            "explored": sorted(tuple(r[k] for k in keys) for r in doc["explored"]), "losses": losses}


def check_transition_runs(project: Path) -> list:
    """One counted run per explored edge, its per-epoch history without gap or duplicate."""
    store = tracker(project)
    doc = json.loads((project / "plan.json").read_text())
    runs = store.search({t.TAG_KIND: t.KIND_TRANSITION}, parent_id=doc["mlflow"]["planning_run_id"])
    counted = [r for r in runs if r.data.tags[t.TAG_STATUS] != t.STATUS_KILLED]
    edges = [(r.data.tags[t.TAG_SRC], r.data.tags[t.TAG_DST]) for r in counted]
    assert sorted(edges) == sorted((r["src"], r["dst"]) for r in doc["explored"])
    assert len(set(edges)) == len(edges)
    assert {r.info.run_id for r in counted} == {r["run_id"] for r in doc["explored"]}
    for run in counted:
        assert run.data.tags[t.TAG_STATUS] == t.STATUS_FINISHED and run.info.status == "FINISHED"
        assert run.data.params["dst"] == run.data.tags[t.TAG_DST]
        n = int(run.data.metrics[t.M_EPOCHS_TRAINED])
        raw = {key: [m.step for m in store.client.get_metric_history(run.info.run_id, key)]
               for key in (t.M_TRAIN_LOSS, t.M_VAL_ACC)}
        assert sorted(raw[t.M_TRAIN_LOSS]) == list(range(1, n + 1)), run.info.run_name
        assert sorted(raw[t.M_VAL_ACC]) == list(range(n + 1)), run.info.run_name
    for run in runs:
        if run.data.tags[t.TAG_STATUS] == t.STATUS_KILLED:
            assert run.info.status == "KILLED" and t.M_EPOCHS_TRAINED not in run.data.metrics
    assert not work_dirs(project)  # every finished transition's work folder is cleared
    return runs


@pytest.fixture(scope="module")
def references(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Launch]:
    """Undisturbed plannings started at once in the background: ``a`` (with a competitor
    ``a2`` started at the same instant in the same folder) and ``b`` in another folder."""
    root = tmp_path_factory.mktemp("references")
    a, b = make_project(root / "a", tiny_shards), make_project(root / "b", tiny_shards)
    return {"a": Launch(a, "plan", "plan"), "a2": Launch(a, "plan", "plan-competitor"), "b": Launch(b, "plan", "plan")}


def planning_a(references: dict[str, Launch]) -> tuple[Launch, Launch]:
    """The two plannings started at once in folder ``a``: (the one that ran, the one that refused)."""
    first, second = references["a"], references["a2"]
    first.wait(), second.wait()
    return (first, second) if first.proc.returncode == 0 or second.proc.returncode != 0 else (second, first)


def test_plan_survives_sigkill_anywhere_and_resumes_where_it_was(
        references: dict[str, Launch], tiny_shards: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "k", tiny_shards)
    launches: list[Launch] = []

    def start() -> Launch:
        launches.append(Launch(project, "plan", f"plan-{len(launches)}"))
        return launches[-1]

    def in_epoch_two() -> Path | None:  # epoch 1 of a transition saved, epoch 2 not yet
        return next((w for w in work_dirs(project) if epoch_files(w) == [0, 1]), None)

    # 1. during an epoch
    kill_when(start(), in_epoch_two)

    # 2. in the middle of writing an epoch state (its temporary file exists, not yet renamed)
    second = start()
    tmp = kill_when(second, new_tmp_files(project, "transitions"), every=0.0005)
    assert "resuming after epoch 1 " in second.log  # not from zero: at most one epoch lost
    written = epoch_of(tmp[0])
    assert epoch_files(tmp[0].parent)[-1] == written - 1

    # 3. between transitions: one finished and its folder cleared, the next not started
    third = start()
    seen: set[Path] = set()

    def between() -> bool:
        now = set(work_dirs(project))
        seen.update(now)
        return bool(seen - now) and not now

    kill_when(third, between)
    assert f"resuming after epoch {written - 1} " in third.log

    # 4. during an epoch of a later transition, whose work folder is then lost
    fourth = start()
    wiped = kill_when(fourth, in_epoch_two)
    assert "resuming" not in fourth.log
    shutil.rmtree(wiped)

    fifth = start()
    fifth.finish()
    assert "resuming" not in fifth.log and "reusing finished MLflow run" in fifth.log

    assert plan_summary(project) == plan_summary(planning_a(references)[0].project)
    runs = check_transition_runs(project)
    killed = [r for r in runs if r.data.tags[t.TAG_STATUS] == t.STATUS_KILLED]
    assert len(killed) == 1 and killed[0].info.run_id == wiped.name  # the one whose folder was wiped
    # no epoch trained twice (the wiped transition restarted from its start model, by design)
    restarted = f"{killed[0].data.tags[t.TAG_SRC]} → {killed[0].data.tags[t.TAG_DST]}"
    trained = Counter(m.groups() for launch in launches for m in EPOCH_LINE.finditer(launch.log))
    assert trained and all(n == 1 for (label, _), n in trained.items() if label != restarted), trained
    # the report counts the planning's cost once: the killed run is not in it
    doc = json.loads((project / "plan.json").read_text())
    data = read_store(f"sqlite:///{project / 'mlflow.db'}", "resume")
    cost = planning_cost(data, data.plannings.set_index("run_id", drop=False).loc[doc["mlflow"]["planning_run_id"]])
    assert cost.epochs == doc["compute"]["epochs_trained"] == sum(r["epochs_trained"] for r in doc["explored"])
    assert cost.clips == sum(r.data.metrics.get(t.M_CLIPS_SEEN, 0) for r in runs)


def test_a_second_plan_on_the_same_project_refuses(references: dict[str, Launch]) -> None:
    first, second = planning_a(references)
    assert second.wait() == 2, second.log
    assert "another `opplan plan` is running" in second.log and "Traceback" not in second.log
    first.finish()
    assert "Traceback" not in first.log
    check_transition_runs(first.project)


def test_plan_is_deterministic_across_project_folders(references: dict[str, Launch]) -> None:
    planning_a(references)[0].finish()
    references["b"].finish()
    a, b = plan_summary(references["a"].project), plan_summary(references["b"].project)
    assert a == b
    assert len(a["losses"]) == 6 and all(len(v) == MAX_EPOCHS for v in a["losses"].values())


def test_final_survives_sigkill_and_resumes_where_it_was(tiny_shards: Path, tmp_path: Path) -> None:
    reference, project = make_project(tmp_path / "ref", tiny_shards), make_project(tmp_path / "k", tiny_shards)
    for folder in (reference, project):
        plan = with_current_hash(FINAL_PLAN, load_params(folder / "params.yaml"))
        (folder / "plan.json").write_text(json.dumps(plan))
    undisturbed = Launch(reference, "final", "final")

    # during epoch 4 (the second of the frozen-BN segment at clip length 8)
    first = Launch(project, "final", "final-0")
    kill_when(first, lambda: any(epoch_files(w)[-1:] == [3] for w in work_dirs(project, "final")))
    # while a checkpoint is being written
    second = Launch(project, "final", "final-1")
    tmp = kill_when(second, new_tmp_files(project, "final"), every=0.0005)
    assert "resuming after epoch 3 of 5" in second.log
    written = epoch_of(tmp[0])
    assert epoch_files(tmp[0].parent)[-1] == written - 1
    third = Launch(project, "final", "final-2")
    third.finish()
    assert f"resuming after epoch {written - 1} of 5" in third.log
    undisturbed.finish()

    ours, theirs = (json.loads((p / "final" / "run.json").read_text()) for p in (project, reference))
    for key in ("epochs", "schedule", "losses", t.M_EPOCHS_TRAINED, t.M_CLIPS_SEEN):
        assert ours[key] == theirs[key], key
    assert len(ours["losses"]) == 5
    runs = tracker(project).search({t.TAG_KIND: t.KIND_FINAL})
    assert [r.info.run_id for r in runs] == [ours["run_id"]]
    assert runs[0].data.tags[t.TAG_STATUS] == t.STATUS_FINISHED
    steps = [m.step for m in tracker(project).client.get_metric_history(ours["run_id"], t.M_TRAIN_LOSS)]
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert not work_dirs(project, "final")
