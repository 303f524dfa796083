"""The final model used: the MLflow model and its registry version predict as ``evaluate``
scores, and ``opplan predict`` on the held-out videos gives ``evaluate``'s top-1."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from tiny import tiny_config, with_current_hash

from opplan import names as n
from opplan.cli import cli
from opplan.config import Params
from opplan.stages.common import final_state
from opplan.stages.evaluate import run_evaluate
from opplan.stages.final import run_final
from opplan.tracking.client import Tracker
from opplan.train.checkpoint import MODEL_FILE
from opplan.train.setup import TrainSetup

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PLAN = {"mlflow": {"planning_run_id": "plan-of-test-serving"}, "path": ["S0", "cs/4/0.02"], "final_state": "cs/4/0.02",
        "transitions": [{"src": "S0", "dst": "cs/4/0.02", "chosen_epoch": 1}]}
NAME = "tiny-video"


@pytest.fixture(scope="module")
def evaluated(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A one-epoch final model of the tiny dataset, evaluated, registered, and evaluate's own
    per-video scores (the held-out loader, as ``score_model`` runs it)."""
    project = tmp_path_factory.mktemp("serving")
    params = Params.model_validate(tiny_config(
        tiny_shards, plan={"clip_lengths": [4], "lrs": [0.02]}, final={"register_as": NAME},
        tracking={"uri": f"sqlite:///{project / 'mlflow.db'}", "system_metrics_seconds": 0.05}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.delenv(n.ENV_URI, raising=False)
        (project / "plan.json").write_text(json.dumps(with_current_hash(PLAN, params)))
        record = run_final(params)
        metrics = run_evaluate(params)
        setup = TrainSetup(params, tiny_shards)
        state = final_state(record, params)
        model = setup.new_model(state.clip_length)
        setup.load_weights(model, project / "final" / MODEL_FILE)
        scores, labels = setup.predict(model, "test", state, mode="test")
        dataset = setup.dataset("test", state, mode="test")
        views = [dataset[i][0].numpy() for i in range(len(dataset))]
    return {"project": project, "params": params, "record": record, "metrics": metrics, "scores": scores,
            "labels": labels, "views": views, "paths": list(dataset.paths)}


def test_mlflow_model_and_registry_version_predict_as_evaluate(evaluated: dict) -> None:
    params, record = evaluated["params"], evaluated["record"]
    mlflow.set_tracking_uri(params.tracking.uri)
    mlflow.set_registry_uri(params.tracking.uri)
    for uri in (f"runs:/{record.run_id}/model", f"models:/{NAME}/1"):
        loaded = mlflow.pyfunc.load_model(uri)
        got = np.stack([loaded.predict(v).mean(axis=0) for v in evaluated["views"]])
        np.testing.assert_allclose(got, evaluated["scores"], atol=1e-5)
        meta = loaded.metadata
        assert meta.get_input_schema().inputs[0].shape == (-1, 3, 4, 32, 32)
        assert meta.metadata["classes"] == Path(params.prepare.out, "classes.txt").read_text().split("\n")[:4]
        assert meta.metadata["view_settings"]["clips"] == 2 and meta.metadata["view_settings"]["crops"] == 3
    version = mlflow.MlflowClient().get_model_version(NAME, "1")
    assert version.run_id == record.run_id
    assert version.tags["planning_run_id"] == "plan-of-test-serving" and version.tags["path"] == "cs/4/0.02"
    assert float(version.tags[f"heldout_{n.M_TOP1}"]) == pytest.approx(evaluated["metrics"][n.M_TOP1], abs=1e-6)


def test_loading_a_model_leaves_mlflows_process_uris_as_they_were(evaluated: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``opplan predict`` used from Python must not point later stages at the model's store."""
    import os

    from opplan.tracking.model import load_bundle

    for name in (n.ENV_URI, "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    uri = evaluated["params"].tracking.uri
    bundle = load_bundle(f"runs:/{evaluated['record'].run_id}/model", uri)
    assert bundle.classes == Path(evaluated["params"].prepare.out, "classes.txt").read_text().split("\n")[:4]
    assert n.ENV_URI not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before and uri not in before


def test_evaluate_again_keeps_one_registry_version(evaluated: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(evaluated["project"])
    monkeypatch.delenv(n.ENV_URI, raising=False)
    run_evaluate(evaluated["params"])
    tracker = Tracker.from_params(evaluated["params"].tracking)
    assert len(tracker.client.search_model_versions(f"name = '{NAME}'")) == 1


@pytest.mark.parametrize("model", ["final/model.pt", "runs", f"models:/{NAME}/1"])
def test_predict_gives_evaluates_top1_and_survives_a_broken_file(evaluated: dict, model: str,
                                                                  tiny_dataset: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = evaluated["project"]
    monkeypatch.chdir(project)
    monkeypatch.delenv(n.ENV_URI, raising=False)
    (project / "params.yaml").write_text(json.dumps(tiny_config(
        str(evaluated["params"].prepare.out), plan={"clip_lengths": [4], "lrs": [0.02]},
        tracking={"uri": evaluated["params"].tracking.uri})))
    broken = project / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    videos = [str(tiny_dataset / p) for p in evaluated["paths"]]
    ref = f"runs:/{evaluated['record'].run_id}/model" if model == "runs" else model
    result = CliRunner().invoke(cli, ["predict", videos[0], str(broken), *videos[1:], "--model", ref, "--json",
                                      "--top-k", "2"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line]
    assert len(errors) == 1 and str(broken) in errors[0] and "cannot be decoded" in errors[0]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["video"] for d in lines] == videos
    classes = Path(evaluated["params"].prepare.out, "classes.txt").read_text().split("\n")
    expected = evaluated["scores"].argmax(axis=1)
    assert [d["top"][0]["label"] for d in lines] == [classes[i] for i in expected]
    for doc, row in zip(lines, evaluated["scores"]):
        assert doc["top"][0]["probability"] == pytest.approx(float(row.max()), abs=1e-5)


def test_the_final_run_has_system_metrics(evaluated: dict) -> None:
    """Sampled every 0.05 s while the final model trained (``tracking.system_metrics_seconds``)."""
    tracker = Tracker.from_params(evaluated["params"].tracking)
    metrics = tracker.get_run(evaluated["record"].run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0 * 64
    assert metrics["system/system_memory_usage_megabytes"] > 0
