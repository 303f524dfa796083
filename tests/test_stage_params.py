"""``dvc.yaml``'s params of each stage are the ones :mod:`opplan.dependencies` derives, every
setting of a params file is either a dependency of some stage or changes only speed, what the
stages' code reads is among their dependencies, and the planning and grid hashes are computed
from exactly those keys (docs/design.md §13)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from test_dvc_deps import script_of, source_files

from opplan import dependencies as d
from opplan.config import Params
from opplan.params_file import load_params, parse_params
from opplan.stages.common import config_hash, planning_config, stage_config

ROOT = Path(__file__).resolve().parent.parent


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covers(entry: str, key: str) -> bool:
    return key == entry or key.startswith(entry + ".")


def stages_of(key: str) -> set[str]:
    """The stages ``dvc status`` names after an edit of ``key``: those whose params cover it."""
    return {name for name, stage in dvc_stages().items() if any(covers(p, key) for p in stage.get("params", []))}


def test_dvc_yaml_lists_the_derived_params_of_every_stage() -> None:
    stages = dvc_stages()
    assert set(stages) == set(d.STAGE_READS)
    for name, stage in stages.items():
        assert stage.get("params", []) == d.stage_params(name), f"dvc.yaml stage {name!r}: params differ from " \
                                                                  f"opplan.dependencies.stage_params({name!r})"


@pytest.mark.parametrize("key", d.all_keys())
def test_an_edit_of_each_key_reruns_the_stages_that_read_it_and_no_other(key: str) -> None:
    expected = {stage for stage in d.STAGE_READS if key in d.result_keys(stage)
                or key in d.STAGE_WHERE.get(stage, d.WHERE)}
    if key in d.runtime_keys():
        assert not expected and not stages_of(key), f"{key} changes only speed, yet a stage depends on it"
    else:
        assert expected, f"{key} is neither read by a stage nor listed in opplan.dependencies.RUNTIME"
        assert stages_of(key) == expected


def test_the_demo_settings_rerun_what_the_issue_found_missing() -> None:
    for key in ("plan.metric", "plan.val_clips", "plan.decision", "plan.tie_se", "plan.keep_start_se"):
        assert {"plan", "final", "evaluate"} <= stages_of(key)
        assert "prepare" not in stages_of(key) and "report" not in stages_of(key)
    assert stages_of("plan.delay") == {"plan", "final", "evaluate"}  # not the grid: it does not plan
    assert stages_of("runtime.plan_workers") == stages_of("runtime.num_workers") == set()


def _read_keys(path: Path) -> set[str]:
    """``params.<section>.<key>`` (and ``params.seed``/``params.device``) read in a file, and the
    sections it dumps whole with ``section_dict``."""
    found: set[str] = set()
    fields = {name: d._fields(name) for name in Params.model_fields}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner = node.value
            owner = inner.value.attr if isinstance(inner.value, ast.Attribute) else getattr(inner.value, "id", "")
            if owner == "params" and node.attr in fields.get(inner.attr, []):
                found.add(f"{inner.attr}.{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr in ("seed", "device"):
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            if owner == "params":
                found.add(node.attr)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "section_dict":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return found


NOT_RUN = {
    # opplan/data/prepare.py: only prepare reads the videos; later stages read the shards (a dependency)
    *((stage, "data.root") for stage in ("plan", "final", "evaluate", "baselines")),
    # the knee's keep-start rule and the transition runner are planning's (opplan/train/transition.py,
    # opplan/stages/transitions.py, imported with the worker pool the grid shares); the grid trains fixed schedules
    *(("baselines", f"plan.{key}") for key in ("keep_start_se", "fit_function", "max_epochs", "prune", "score")),
    # the test-split loader (opplan/train/setup.py); planning loads only train and val
    ("plan", "evaluate.batch_size"),
    # opplan/inference.py and opplan/data/prepare.py, reached through opplan.tracking (the model that
    # evaluate logs); report only reads the store and the stages' files
    *(("report", key) for key in ("data.root", "evaluate.clips", "evaluate.crop_size", "evaluate.crops",
                                  "plan.clip_lengths", "plan.lrs", "prepare.max_frames", "prepare.out",
                                  "prepare.short_side", "seed", "train.crop_size", "train.eval_short_side",
                                  "train.snippet_length")),
    # pipeline/_stage.py: the distributed launch is the training stages'; the CPU pin selects the float
    # kernels the training stages run (docs/determinism.md)
    *((stage, key) for stage in ("prepare", "report") for key in ("device", "train.cpu_isa")),
}
"""Reads the import walk finds in a stage's files but the stage never executes."""


@pytest.mark.parametrize("name", sorted(d.STAGE_READS))
def test_what_a_stage_s_code_reads_is_a_dependency_or_runtime(name: str) -> None:
    listed = dvc_stages()[name].get("params", [])
    read = set().union(*(_read_keys(p) for p in source_files(script_of(dvc_stages()[name]))))
    missing = sorted(k for k in read - d.runtime_keys() if (name, k) not in NOT_RUN
                     if not any(covers(p, k) or covers(k, p) for p in listed))
    assert not missing, f"dvc.yaml stage {name!r} reads these params but does not depend on them: {missing}"


def test_the_read_walk_finds_the_planning_signal() -> None:
    assert {"plan.metric", "plan.decision", "model.name"} <= set().union(
        *(_read_keys(p) for p in source_files(ROOT / "pipeline" / "plan.py")))


@pytest.mark.parametrize("stage", ["plan", "baselines"])
def test_the_hashes_cover_exactly_the_stage_s_result_keys(stage: str) -> None:
    values = d.result_values(load_params(ROOT / "params.yaml"), stage)
    flat = {f"{s}.{k}" for s, v in values.items() if isinstance(v, dict) for k in v}
    flat |= {s for s, v in values.items() if not isinstance(v, dict)}
    assert flat == set(d.result_keys(stage)) - set(d.SHORTHANDS)
    listed = [k for k in d.stage_params(stage) if k not in d.WHERE]
    assert {key for entry in listed for key in d._expand(entry)} - set(d.SHORTHANDS) == flat


def test_the_hashes_follow_the_keys(tiny_shards: Path) -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())

    def hashes(section: str, key: str, value: object) -> tuple[str, str]:
        edited = {**data, section: {**data[section], key: value}}
        params = parse_params(edited)
        return (config_hash(planning_config(params, tiny_shards)),
                config_hash(stage_config(params, "baselines", tiny_shards)))

    plan0, grid0 = hashes("plan", "delay", data["plan"]["delay"])
    assert hashes("runtime", "plan_workers", 1) == (plan0, grid0)
    assert hashes("runtime", "num_workers", 3) == (plan0, grid0)
    assert hashes("runtime", "retry_seconds", 5) == (plan0, grid0)
    assert hashes("runtime", "val_cache_mb", 0) == (plan0, grid0)
    decided = hashes("plan", "decision", "argmax")
    assert decided[0] != plan0 and decided[1] == grid0
    delayed = hashes("plan", "delay", 3)
    assert delayed[0] != plan0 and delayed[1] == grid0
    metric = hashes("plan", "metric", "top1")
    assert metric[0] != plan0 and metric[1] != grid0
    assert hashes("baselines", "epochs", [16])[1] != grid0


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *sorted((ROOT / "opplan" / "presets").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_every_key_a_stage_lists_one_by_one_is_written_in_the_shipped_files(path: Path) -> None:
    """DVC refuses a stage whose listed key is missing from the params file (whole sections
    may leave keys to their defaults)."""
    data = yaml.safe_load(path.read_text())
    listed = {key for stage in d.STAGE_READS for key in d.stage_params(stage) if "." in key}
    missing = sorted(k for k in listed if k.split(".")[1] not in (data.get(k.split(".")[0]) or {}))
    assert not missing, f"{path.name} lacks {missing}"


def test_a_speed_setting_in_its_old_place_still_works_and_says_where_it_moved(
        caplog: pytest.LogCaptureFixture) -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    runtime = data.pop("runtime")
    old = {**data, "plan": {**data["plan"], "workers": 3}, "train": {**data["train"], "num_workers": 1}}
    params = parse_params(old)
    assert params.plan.workers == params.runtime.plan_workers == 3
    assert params.train.num_workers == params.runtime.num_workers == 1
    assert "plan.workers has moved to runtime.plan_workers" in caplog.text
    assert "train.num_workers has moved to runtime.num_workers" in caplog.text
    assert params.runtime.prefetch_factor == 4  # the default where neither place sets it
    new = parse_params({**data, "runtime": runtime})
    assert new.plan.workers == runtime["plan_workers"] and new.train.prefetch_factor == runtime["prefetch_factor"]
    with pytest.raises(Exception, match="runtime.plan_workers"):
        parse_params({**old, "runtime": {"plan_workers": 1}})
