"""params.yaml validation: typed settings, clear errors naming file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from opplan.cli import cli
from opplan.config import PRESETS_DIR, Params, load_params
from opplan.errors import ParamsError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_shipped_params_and_presets_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.plan.clip_lengths == [4, 8, 16]
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
    assert printed["plan"]["clip_lengths"] == [4, 8, 16] and printed["evaluate"]["clips"] == 10

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
