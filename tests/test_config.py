"""params.yaml validation: typed settings, clear errors naming file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from opplan.cli import cli
from opplan.config import Params
from opplan.errors import ParamsError
from opplan.params_file import PRESETS_DIR, load_params

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_shipped_params_and_presets_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    lengths = params.plan.clip_lengths
    assert len(lengths) >= 2 and lengths == sorted(set(lengths))  # the demo plans a clip-length choice
    presets = sorted(PRESETS_DIR.glob("*.yaml"))
    assert {p.stem for p in presets} >= {"ucf101", "hmdb51", "kinetics400", "ssv2", "activitynet", "demo"}
    for preset in presets:
        load_params(preset)
    assert load_params(PRESETS_DIR / "ucf101.yaml").plan.lrs == [0.01, 0.001, 0.0001]
    assert load_params(PRESETS_DIR / "ssv2.yaml").train.flip is False
    assert load_params(PRESETS_DIR / "demo.yaml") == load_params(ROOT / "params.yaml")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "")) == Params()


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [
        ("plan:\n  delay: 3\n  bogus: 1\n", 3, ["unknown key 'plan.bogus'", "allowed keys here", "delay"]),
        ("bogus_section: {}\n", 1, ["unknown key 'bogus_section'"]),
        ("train:\n  batch_size: many\n", 2, ["'train.batch_size'", "valid integer", "'many'"]),
        ("plan:\n  lrs: [0.001, 0.01]\n", 2, ["'plan.lrs'", "strictly decreasing", "[0.001, 0.01]"]),
        ("plan:\n  clip_lengths: [32, 16]\n", 2, ["'plan.clip_lengths'", "strictly increasing"]),
        ("plan:\n  graph: fancy\n", 2, ["'plan.graph'", "'basic' or 'extended'", "'fancy'"]),
        ("plan:\n  final_states: [cs/128/0.01]\n", 2, ["final state 'cs/128/0.01' is not a state of the graph"]),
        ("model:\n  dropout: 1.5\n", 2, ["'model.dropout'", "less than or equal to 1", "1.5"]),
        ("plan:\n  sampling: [cs, xs]\n", 2, ["'plan.sampling.1'", "'cs' or 'us'"]),
        ("train:\n  crop_size: 64\n  scale_jitter: [48, 80]\n", 2, ["scale_jitter low (48) must be >= crop_size (64)"]),
        ("train:\n  snippet_length: 3\n", 1, ["'plan'", "train.snippet_length (3) must divide every clip length", "[16, 32, 64]"]),
        ("evaluate:\n  crop_size: 300\n", 2, ["'evaluate'", "evaluate.crop_size (300) must be <= train.eval_short_side (256)"]),
        ("train:\n  momentum: 0\n  nesterov: true\n", 3, ["'train.nesterov'", "Nesterov momentum needs momentum > 0"]),
        ("train:\n  head_loss: mean\n", 2, ["'train.head_loss'", "'per_head'"]),
    ],
)
def test_bad_params_name_file_line_key_and_value(tmp_path: Path, text: str, line: int, fragments: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    for fragment in fragments:
        assert fragment in message


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"params.yaml:3: not valid YAML"):
        load_params(write(tmp_path, "plan:\n  delay: [1\n"))
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "absent.yaml")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(write(tmp_path, "- 1\n- 2\n"))


def test_params_are_frozen() -> None:
    params = Params()
    with pytest.raises(Exception):
        params.plan.delay = 3  # type: ignore[misc]


def test_check_params_cli_prints_settings_or_error_without_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(cli, ["check-params", str(ROOT / "params.yaml")])
    assert good.exit_code == 0, good.output
    printed = yaml.safe_load(good.output.split("\n", 1)[1])
    shipped = load_params(ROOT / "params.yaml")
    assert printed["plan"]["clip_lengths"] == shipped.plan.clip_lengths and printed["evaluate"]["clips"] == 10

    bad = write(tmp_path, "plan:\n  delay: zero\n")
    result = subprocess.run([sys.executable, "-m", "opplan.cli", "check-params", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{bad}:2: 'plan.delay'" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_params_copies_a_preset_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "p.yaml"
    assert runner.invoke(cli, ["init-params", "--preset", "kinetics400", "--out", str(out)]).exit_code == 0
    assert load_params(out).plan.clip_lengths == [16, 32, 128]
    again = runner.invoke(cli, ["init-params", "--preset", "kinetics400", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    unknown = runner.invoke(cli, ["init-params", "--preset", "imagenet", "--out", str(out)])
    assert unknown.exit_code == 2 and "shipped presets" in unknown.output


def test_init_params_takes_a_preset_name_never_a_path(tmp_path: Path) -> None:
    """``--preset ../../x`` must not read a YAML file elsewhere on disk."""
    outside = tmp_path / "x.yaml"
    outside.write_text("seed: 7\n")
    out = tmp_path / "p.yaml"
    for name in [str(outside.with_suffix("")), "../" * 12 + str(outside.with_suffix(""))[1:], "demo/../demo", ""]:
        result = CliRunner().invoke(cli, ["init-params", "--preset", name, "--out", str(out)])
        assert result.exit_code == 2 and "unknown preset" in result.output and "a name, not a path" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


# --- hostile params -----------------------------------------------------------------------

ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ALIAS_BOMB, "params.yaml:2: aliases (*name) are not allowed in params; write the value out"),
        ("plan: &p {delay: 2}\nseed: 1\nother: *p\n", "params.yaml:3: aliases (*name) are not allowed"),
        ("plan:\n  delay: 3\nseed: 1\nplan:\n  delay: 2\n", ":4: key 'plan' is written twice (lines 1 and 4)"),
        ("plan:\n  delay: 3\n  lrs: [0.1]\n  delay: 4\n", ":4: key 'delay' is written twice (lines 2 and 4)"),
        ("seed: 1180591620717411303424\n", "params.yaml:1: 'seed': Input should be less than or equal to 4294967295"),
        ("seed: -1\n", "'seed': Input should be greater than or equal to 0"),
        ("prepare:\n  short_side: 20000\n", ":2: 'prepare.short_side': Input should be less than or equal to 1024"),
        ("tracking:\n  experiment: ''\n", ":2: 'tracking.experiment': String should have at least 1 character"),
        ("tracking:\n  experiment: ../../../tmp/x\n", ":2: 'tracking.experiment': must be a plain name, not a path"),
        ("tracking:\n  experiment: /tmp/x\n", "'tracking.experiment': must be a plain name, not a path"),
        ("tracking:\n  experiment: '..'\n", "'tracking.experiment': must be a plain name, not a path"),
        ("tracking:\n  experiment: 'a\\\\b'\n", "'tracking.experiment': must be a plain name, not a path"),
        ("tracking:\n  retry_seconds: .inf\n", "'tracking.retry_seconds': Input should be a finite number"),
        ("train:\n  momentum: .nan\n", "'train.momentum': Input should be a finite number"),
        ("plan:\n  lrs: [.inf, 0.1]\n", "'plan.lrs.0': Input should be a finite number"),
        ("plan:\n  horizon: 1000000000000\n", "'plan.horizon': Input should be less than or equal to 100000"),
        ("prepare:\n  out: ''\n", "'prepare.out': String should have at least 1 character"),
        ("data:\n  root: ' data'\n", "'data.root': must not have surrounding blanks or a NUL character"),
        ("distributed:\n  timeout_minutes: 100000000\n", "'distributed.timeout_minutes': Input should be less than"),
    ],
)
def test_hostile_params_are_refused_in_one_short_message(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, text)
    result = CliRunner().invoke(cli, ["check-params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert expected in result.output, result.output
    assert len(result.output) < 400 and "Traceback" not in result.output


def test_a_huge_bad_value_is_shown_as_a_short_excerpt(tmp_path: Path) -> None:
    long_list = ", ".join(["8"] * 5_000)
    write(tmp_path, f"plan:\n  clip_lengths: [{long_list}]\n")
    result = CliRunner().invoke(cli, ["check-params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2 and "strictly increasing" in result.output and len(result.output) < 600
    write(tmp_path, f"plan:\n  sampling: [{', '.join(['xs'] * 50)}]\n")
    many = CliRunner().invoke(cli, ["check-params", str(tmp_path / "params.yaml")])
    assert many.exit_code == 2 and "... and 40 more errors" in many.output
    assert len(many.output.splitlines()) == 11
    (tmp_path / "params.yaml").write_bytes(b"# " + b"x" * (2 << 20))
    too_big = CliRunner().invoke(cli, ["check-params", str(tmp_path / "params.yaml")])
    assert too_big.exit_code == 2 and "too large for a params file" in too_big.output


def test_an_anchor_without_alias_and_the_shipped_files_still_load(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "plan: &p\n  delay: 2\n")).plan.delay == 2


def test_ui_runs_mlflow_lean_from_opplans_own_environment() -> None:
    """`.venv/bin/opplan ui` without an activated venv (no `mlflow` on PATH): this interpreter,
    one worker, MLflow's job runner off."""
    import importlib.util

    from opplan.tracking import ui

    command = ui.server_command("sqlite:///x.db", "127.0.0.1", 5123)
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[command.index("--port") + 1] == "5123" and command[command.index("--workers") + 1] == "1"
    assert ui.LEAN_ENV == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    spec = importlib.util.find_spec("mlflow")  # `python -m mlflow` runs in this interpreter
    assert spec is not None and (Path(spec.origin).parent / "__main__.py").is_file()


def test_ui_on_a_taken_or_invalid_port_exits_2_with_one_line_and_starts_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import subprocess

    started: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["ui", "--params", str(ROOT / "params.yaml"), "--port", str(port)])
    assert result.exit_code == 2 and started == []
    assert result.output.count("\n") == 1 and f"port {port}" in result.output and "--port" in result.output
    invalid = CliRunner().invoke(cli, ["ui", "--params", str(ROOT / "params.yaml"), "--port", "99999"])
    assert invalid.exit_code == 2 and started == [] and invalid.output.count("\n") == 1 and "99999" in invalid.output


def test_ui_help_says_what_it_binds_and_prints() -> None:
    text = CliRunner().invoke(cli, ["ui", "--help"]).output
    assert all(word in text for word in ("--host", "--port", "V_se", "chosen_epoch", "compare", "Ctrl-C"))


@pytest.mark.parametrize("name,longest", [("ucf101", 64), ("hmdb51", 64), ("kinetics400", 128), ("activitynet", 128)])
def test_presets_follow_the_authors_recipe(name: str, longest: int) -> None:
    """docs/fidelity.md: the authors' train_3d.py / train_3d_op.py and configs."""
    params = load_params(PRESETS_DIR / f"{name}.yaml")
    train = params.train
    assert params.model.init and params.model.init.startswith("imagenet:")
    assert (train.nesterov, train.clip_grad_norm, train.head_loss, train.snippet_length) == (True, 40, "per_head", 4)
    assert train.lr_for(longest, 0.01) == pytest.approx(0.001)  # a tenth of the grid at the longest clips
    assert all(train.lr_for(length, 0.01) == 0.01 for length in params.plan.clip_lengths[:-1])
    # one optimizer step of 256 clips at every length, long clips through the device in micro-batches
    assert {train.batch_for(length) for length in params.plan.clip_lengths} == {256}
    assert train.micro_batch_for(longest) < train.micro_batch_for(params.plan.clip_lengths[0])
    assert params.evaluate.crop_size == 256


def test_kinetics_baseline_grid_is_the_papers() -> None:
    assert load_params(PRESETS_DIR / "kinetics400.yaml").baselines.epochs == [128, 192, 256, 320, 384]


def test_the_authors_setting_sets_its_keys_and_refuses_conflicts(tmp_path) -> None:
    from opplan.config import AUTHORS_PLAN
    from opplan.errors import ParamsError
    from opplan.params_file import load_params

    path = tmp_path / "params.yaml"
    path.write_text("plan:\n  setting: authors\n  val_clips: 1\n")
    plan = load_params(path).plan
    assert plan.graph == "basic" and plan.sampling == ["cs"] and plan.val_clips == 1
    assert all(getattr(plan, k) == v for k, v in AUTHORS_PLAN.items())
    path.write_text("plan:\n  setting: authors\n  sampling: [us]\n")
    assert load_params(path).plan.sampling == ["us"]  # one sampling, the user's
    for bad, says in (("  graph: extended\n", "sets plan.graph to 'basic'"),
                      ("  sampling: [cs, us]\n", "plans one sampling"),
                      ("  val_clips: 3\n", "sets plan.val_clips to 1")):
        path.write_text("plan:\n  setting: authors\n" + bad)
        with pytest.raises(ParamsError, match=says) as err:
            load_params(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    path.write_text("plan:\n  graph: extended\n")
    assert load_params(path).plan.graph == "extended" and load_params(path).plan.setting == "own"


def test_every_params_key_is_documented_where_its_default_is_defined() -> None:
    """Each ``params.yaml`` key carries the docstring under its field (``use_attribute_docstrings``)."""
    from pydantic import BaseModel

    def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                missing += undocumented(kind, f"{prefix}{name}.")
            elif not (field.description or "").strip():
                missing.append(prefix + name)
        return missing

    assert Params.model_fields["plan"].annotation.model_fields["graph"].description.startswith("Transition graph")
    assert undocumented(Params) == []
