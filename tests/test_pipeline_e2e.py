"""End to end: `dvc repro` in a temporary copy of the project on a tiny configuration."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny import tiny_config

from opplan import tracking as t
from opplan.params_file import load_params
from opplan.planning.graph import graph_from_params

# The module's first test (or the one test run alone) carries the fixture's `dvc repro`: several
# minutes of training on a busy machine, beyond the suite's 600 s per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
COPIED = ["opplan", "pipeline", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "dvc.yaml",
          "params.yaml", "pyproject.toml"]
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "opplan e2e", "GIT_AUTHOR_EMAIL": "e2e@opplan.invalid",
                "GIT_COMMITTER_NAME": "opplan e2e", "GIT_COMMITTER_EMAIL": "e2e@opplan.invalid"}

TINY = {name: values for name, values in tiny_config(
    Path("shards"), plan={"graph": "extended", "max_epochs": 6}, baselines={"enabled": True, "decays": ["step"]},
    tracking={"experiment": "e2e"}, runtime={"prepare_workers": 1}).items() if isinstance(values, dict)}
TINY["prepare"] = {"short_side": 40}  # prepare.out: the project's own, as its params.yaml writes it


def run(command: list[str], cwd: Path) -> str:
    # the stages (`python pipeline/<stage>.py`, DVC's copies included) import this checkout's opplan,
    # whichever one the environment's package points at
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **GIT_IDENTITY, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": path}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with a tiny dataset, reproduced once with `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e")
    for name in COPIED:
        source, target = ROOT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**params[section], **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "opplan.cli", "data", "synth", "data", "--classes", "4",
         "--videos-per-class", "3", "1", "--frames", "24", "40"], root)
    run(["dvc", "add", "-q", "data"], root)
    run(["dvc", "repro"], root)
    return root


def test_repro_plans_a_path_of_the_graph_with_a_nested_run_per_edge(project: Path) -> None:
    params = load_params(project / "params.yaml")
    plan = json.loads((project / "plan.json").read_text())
    graph = graph_from_params(params.plan)
    edges = {(a.name, b.name) for a, b in graph.edges}
    assert all((a, b) in edges for a, b in zip(plan["path"], plan["path"][1:]))
    assert plan["path"][0] == "S0" and plan["path"][-1] == "cs/8/0.002"

    tracker = t.Tracker(f"sqlite:///{project / 'mlflow.db'}", "e2e", artifact_root=project / "mlartifacts")
    runs = tracker.search({t.TAG_KIND: t.KIND_TRANSITION}, parent_id=plan["mlflow"]["planning_run_id"])
    assert sorted((r.data.tags[t.TAG_SRC], r.data.tags[t.TAG_DST]) for r in runs) == sorted(edges)
    for run_ in runs:
        assert {t.TAG_SAMPLING, t.TAG_CLIP_LENGTH, t.TAG_LR, t.TAG_STATUS} <= set(run_.data.tags)
        assert {t.M_VAL_ACC, t.M_SCORE, t.M_CHOSEN_EPOCH} <= set(run_.data.metrics)
        assert tracker.client.list_artifacts(run_.info.run_id, t.ARTIFACT_CHECKPOINT_DIR)

    metrics = json.loads((project / "metrics.json").read_text())
    assert {"top1", "top5", "mean_class_acc", "single_view_top1"} <= set(metrics)
    final = tracker.search({t.TAG_KIND: t.KIND_FINAL})
    assert final[-1].data.metrics["top1"] == pytest.approx(metrics["top1"], abs=1e-6)

    # the report's transition table holds the very numbers MLflow holds
    table = pd.read_csv(project / "reports" / "transitions.csv")
    assert len(table) == len(runs)
    by_edge = {(r.data.tags[t.TAG_SRC], r.data.tags[t.TAG_DST]): r.data.metrics for r in runs}
    for row in table.itertuples():
        logged = by_edge[(row.src, row.dst)]
        assert row.V == pytest.approx(logged[t.M_SCORE])
        assert row.epochs_trained == logged[t.M_EPOCHS_TRAINED]
    on_path = set(zip(plan["path"], plan["path"][1:]))
    assert {(r.src, r.dst) for r in table.itertuples() if r.on_path} == on_path
    report = (project / "reports" / "report.md").read_text()
    assert f"{metrics['top1'] * 100:.1f}" in report


def digests(folder: Path) -> dict[str, str]:
    """Path relative to ``folder`` -> md5 of the bytes, for every file under ``folder``."""
    return {str(f.relative_to(folder)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def changed_stages(cwd: Path) -> set[str]:
    """Names of the stages and .dvc files that `dvc status` reports as changed."""
    status = run(["dvc", "status", "--json"], cwd)
    return set(json.loads(status[status.index("{"):]))


def test_a_second_machine_pulls_data_shards_and_model_from_a_dvc_remote(project: Path, tmp_path: Path) -> None:
    # 1. first machine: git holds code, params, dvc.lock, data.dvc and the cache: false outputs;
    #    the DVC remote (a local folder here) holds what DVC caches: data/, shards/, final/model.pt
    remote = tmp_path / "remote"
    run(["git", "add", "-A"], project)
    run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "reproduced"], project)
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], project)
    run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "remote", ".dvc/config"], project)
    assert re.search(r"\b[1-9]\d* files? pushed", run(["dvc", "push"], project))
    assert any(f.is_file() for f in remote.rglob("*"))
    assert "Everything is up to date" in run(["dvc", "push"], project)

    # 2. second machine: a git clone has the small outputs but no data, shards, model or cache
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not any((clone / name).exists() for name in ["data", "shards", "final/model.pt", ".dvc/cache", "mlflow.db"])
    assert (clone / "plan.json").read_bytes() == (project / "plan.json").read_bytes()
    assert "storage" in run(["dvc", "remote", "list"], clone)
    run(["dvc", "pull"], clone)
    for folder in ["data", "shards"]:
        assert digests(clone / folder) == digests(project / folder)
    assert "videos.csv" in digests(clone / "shards")
    assert (clone / "final/model.pt").read_bytes() == (project / "final/model.pt").read_bytes()
    assert changed_stages(clone) == set()
    assert "up to date" in run(["dvc", "status"], clone)
    assert run(["git", "status", "--porcelain"], clone) == ""

    # 3. a training node needs only the shards
    node = tmp_path / "node"
    run(["git", "clone", "-q", str(project), str(node)], tmp_path)
    run(["dvc", "pull", "shards"], node)
    assert digests(node / "shards") == digests(project / "shards")
    assert not (node / "data").exists() and not (node / "final/model.pt").exists()


def test_changing_a_planning_param_reruns_plan_but_never_prepare(project: Path) -> None:
    original = (project / "params.yaml").read_text()
    try:
        params = yaml.safe_load(original)
        params["plan"]["delay"] = 2
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        changed = changed_stages(project)
        assert "plan" in changed and "prepare" not in changed and "baselines" not in changed

        params["report"]["figures"] = False
        params["plan"]["delay"] = 1
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert changed_stages(project) == {"report"}
    finally:
        (project / "params.yaml").write_text(original)


def test_experiments_in_temporary_copies_use_the_project_s_store(project: Path) -> None:
    """``dvc exp run --temp`` and ``--queue`` run in copies of the workspace without the
    git-ignored store, which DVC deletes afterwards (docs/operations.md, "Experiments"). Each
    experiment's ``evaluate`` registers the final model it tested under a name of its own: the
    registration is in the project's ``mlflow.db`` (evaluate never creates a store, so without
    the project's it would fail), and its ``report`` reads the planning and final runs there."""
    record = json.loads((project / "final" / "run.json").read_text())
    planning_run = json.loads((project / "plan.json").read_text())["mlflow"]["planning_run_id"]
    run(["git", "add", "-A"], project)
    run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", "before experiments"], project)
    run(["dvc", "exp", "run", "--temp", "-n", "temp-exp", "-S", "final.register_as=temp-exp-model",
         "-S", "report.figures=false"], project)
    run(["dvc", "exp", "run", "--queue", "-n", "queued-exp", "-S", "final.register_as=queued-exp-model",
         "-S", "report.figures=false"], project)
    run(["dvc", "queue", "start"], project)
    deadline = time.monotonic() + 480
    while "Queued" in (status := run(["dvc", "queue", "status"], project)) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert "Success" in status and "Failed" not in status, status
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project)
    assert "temp-exp" in shown and "queued-exp" in shown
    # only evaluate and report ran in the copies; evaluate logs to the final run `dvc repro` made
    tracker = t.Tracker(f"sqlite:///{project / 'mlflow.db'}", "e2e", artifact_root=project / "mlartifacts")
    for name in ["temp-exp-model", "queued-exp-model"]:
        (version,) = tracker.client.search_model_versions(f"name = '{name}'")
        assert version.run_id == record["run_id"]
        assert version.tags["planning_run_id"] == planning_run
