"""``opplan study``: the two-level bootstrap and the verdict on known cases, the grid's
extension rule, the matched-budget pick, and the refusal of an uncommitted or edited config."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny import tiny_config

from opplan.cli import cli
from opplan.config import Params
from opplan.errors import OpplanError
from opplan.stages.baselines import Candidate
from opplan.stats import verdict
from opplan.study.config import load_study, provenance
from opplan.study.grid import extension_needed, interior, matched_budget, pick, result_path, run_candidate
from opplan.study.stats import p_text, t_interval, two_level_bootstrap

ROOT = Path(__file__).resolve().parent.parent


# --- statistics -------------------------------------------------------------------------

def test_identical_sides_give_a_zero_difference_and_non_inferiority() -> None:
    rng = np.random.default_rng(1)
    a = (rng.random((3, 50)) < 0.6).astype(float)
    boot = two_level_bootstrap(a, a, delta=0.03, reps=500)
    assert boot.diff.low == boot.diff.high == 0.0 and boot.p_zero == 1.0
    assert verdict(boot.diff.low, boot.diff.high, 0.03) == "non-inferior"


def test_a_side_right_everywhere_is_better_with_p_below_resolution() -> None:
    boot = two_level_bootstrap(np.ones((3, 40)), np.zeros((3, 40)), delta=0.03, reps=1000)
    assert (boot.diff.low, boot.diff.high) == (1.0, 1.0)
    assert boot.p_zero == 0.0 and p_text(boot.p_zero, 1000) == "< 1/1000"
    assert boot.p_margin == 0.0
    assert verdict(boot.diff.low, boot.diff.high, 0.03) == "better"


def test_replicate_noise_widens_the_interval_beyond_video_noise() -> None:
    # Per-video values constant within a replicate: videos add no noise, replicates do.
    # OP - HS is +0.2, -0.2 and 0 in the three replicates: resampling replicates puts all
    # three draws at -0.2 with probability 1/27 > 2.5 %, so the interval is [-0.2, +0.2].
    a = np.array([[0.7] * 30, [0.3] * 30, [0.5] * 30])
    b = np.full((3, 30), 0.5)
    boot = two_level_bootstrap(a, b, delta=0.03, reps=4000)
    assert boot.diff.mean == pytest.approx(0.0)
    assert boot.diff.low == pytest.approx(-0.2) and boot.diff.high == pytest.approx(0.2)
    assert verdict(boot.diff.low, boot.diff.high, 0.03) == "inconclusive"
    assert boot.a.low == pytest.approx(0.3) and boot.a.high == pytest.approx(0.7)


def test_video_noise_within_one_replicate_matches_the_binomial_se() -> None:
    # One replicate: the two-level bootstrap is the ordinary bootstrap over videos.
    rng = np.random.default_rng(2)
    a = (rng.random((1, 400)) < 0.5).astype(float)
    boot = two_level_bootstrap(a, np.zeros_like(a), delta=0.03, reps=4000)
    se = math.sqrt(a.mean() * (1 - a.mean()) / 400)
    assert (boot.diff.high - boot.diff.low) / 2 == pytest.approx(1.96 * se, rel=0.1)


def test_the_draw_of_videos_is_paired_between_sides() -> None:
    # B = A + 0.1 on every video: the difference never moves, however the videos are drawn.
    rng = np.random.default_rng(3)
    a = rng.random((3, 60)) * 0.8
    boot = two_level_bootstrap(a + 0.1, a, delta=0.03, reps=500)
    assert boot.diff.low == pytest.approx(0.1) and boot.diff.high == pytest.approx(0.1)


def test_sides_of_other_shapes_do_not_pair() -> None:
    with pytest.raises(ValueError, match="do not pair"):
        two_level_bootstrap(np.ones((3, 10)), np.ones((2, 10)), delta=0.03)


def test_t_interval_over_replicates() -> None:
    t = t_interval([1.0, 2.0, 3.0])
    assert t.mean == 2.0
    assert t.high - t.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(t_interval([1.0]).low)


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0.01, 0.05, "better"),
    (-0.02, 0.05, "non-inferior"),
    (-0.02, -0.01, "non-inferior"),  # below 0 yet within the margin
    (-0.08, -0.01, "worse"),
    (-0.10, -0.05, "worse"),
    (-0.08, 0.04, "inconclusive"),
    (-0.03, 0.04, "inconclusive"),  # the low end exactly at -delta is not within it
    (math.nan, 0.1, "inconclusive"),
])
def test_verdict_at_a_margin_of_three_points(low: float, high: float, expected: str) -> None:
    assert verdict(low, high, 0.03) == expected


def test_p_values_above_resolution_are_printed() -> None:
    assert p_text(0.25, 1000) == "0.250" and p_text(0.002, 1000) == "0.0020"


# --- the grid ---------------------------------------------------------------------------

def _row(name: str, val: float, cost: float = 1.0, status: str = "finished") -> dict:
    sampling, schedule, decay, epochs = name.split("/")
    return {"name": name, "sampling": sampling, "schedule": schedule, "decay": decay, "epochs": int(epochs),
            "val_top1": val, "core_seconds": cost, "epochs_trained": int(epochs), "status": status}


def test_extension_rule_adds_the_next_total_for_the_picked_schedule_only() -> None:
    rows = [_row("cs/l1-lN/step/8", 0.3), _row("cs/l1-lN/step/16", 0.5), _row("us/all/cosine/8", 0.2),
            _row("us/all/cosine/16", 0.4)]
    c = extension_needed(rows, [24, 32])
    assert (c.sampling, c.schedule, c.decay, c.epochs) == ("cs", "l1-lN", "step", 24)
    rows.append(_row("cs/l1-lN/step/24", 0.6))  # still at the top: the next one
    assert extension_needed(rows, [24, 32]).epochs == 32
    rows.append(_row("cs/l1-lN/step/32", 0.55))  # the pick (24) is now interior: stop
    assert extension_needed(rows, [24, 32]) is None
    assert pick(rows)["name"] == "cs/l1-lN/step/24" and interior(rows, pick(rows)) is True


def test_extension_rule_stops_when_the_extensions_are_used_up_and_reports_the_edge() -> None:
    rows = [_row("cs/l1-lN/step/8", 0.3), _row("cs/l1-lN/step/16", 0.5)]
    assert extension_needed(rows, []) is None
    assert interior(rows, pick(rows)) is False
    assert extension_needed([_row("cs/l1-lN/step/8", 0.6), _row("cs/l1-lN/step/16", 0.5)], [24]) is None


def test_failed_candidates_are_not_picked() -> None:
    rows = [_row("cs/l1-lN/step/8", 0.3), _row("cs/l1-lN/step/16", 0.9, status="failed")]
    assert pick(rows)["name"] == "cs/l1-lN/step/8"


def test_matched_budget_takes_the_cheapest_candidates_within_the_budget() -> None:
    rows = [_row("cs/l1-lN/step/8", 0.2, 1.0), _row("cs/l1-lN/step/16", 0.5, 2.0),
            _row("cs/l1-lN/step/24", 0.9, 3.0), _row("cs/l1-lN/step/48", 0.95, 10.0)]
    best, taken = matched_budget(rows, 6.0)
    assert taken == ["cs/l1-lN/step/8", "cs/l1-lN/step/16", "cs/l1-lN/step/24"] and best["val_top1"] == 0.9
    best, taken = matched_budget(rows, 5.9)
    assert len(taken) == 2 and best["val_top1"] == 0.5
    assert matched_budget(rows, 0.5) == (None, [])
    assert matched_budget(rows, 100.0)[0]["val_top1"] == 0.95


def test_matched_budget_breaks_ties_as_the_full_grid_does() -> None:
    rows = [_row("cs/l1-lN/step/8", 0.5, 2.0), _row("cs/l2-lN/step/8", 0.5, 1.0)]
    assert matched_budget(rows, 10.0)[0]["name"] == pick(rows)["name"]


# --- the config and its provenance ---------------------------------------------------------

def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "keep").write_text("x")
    _git(tmp_path, "add", "keep")
    _git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_committed_config_is_accepted_and_recorded(repo: Path) -> None:
    study = repo / "s.yaml"
    study.write_text((ROOT / "studies" / "smoke.yaml").read_text())
    _git(repo, "add", "s.yaml")
    _git(repo, "commit", "-qm", "study")
    cfg, text = load_study(study)
    doc = provenance(study, text, allow_dirty=False)
    assert doc["dirty"] is None and doc["config_path"] == "s.yaml" and len(doc["commit"]) == 40
    assert doc["config_text"] == text and len(doc["config_sha256"]) == 64


def test_uncommitted_config_is_refused_unless_allowed(repo: Path) -> None:
    study = repo / "s.yaml"
    study.write_text((ROOT / "studies" / "smoke.yaml").read_text())
    _, text = load_study(study)
    with pytest.raises(OpplanError, match="is not committed"):
        provenance(study, text, allow_dirty=False)
    assert provenance(study, text, allow_dirty=True)["dirty"] == "is not committed"


def test_edited_config_is_refused_by_the_cli_in_one_line(repo: Path) -> None:
    study = repo / "s.yaml"
    study.write_text((ROOT / "studies" / "smoke.yaml").read_text())
    _git(repo, "add", "s.yaml")
    _git(repo, "commit", "-qm", "study")
    study.write_text(study.read_text().replace("delta: 3", "delta: 5"))
    result = CliRunner().invoke(cli, ["study", str(study), "--workdir", str(repo / "w")])
    assert result.exit_code == 2
    assert "differs from its committed version" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (repo / "w").exists()


def test_invalid_config_names_the_field(tmp_path: Path) -> None:
    text = (ROOT / "studies" / "smoke.yaml").read_text().replace("extension: [3]", "extension: [2]")
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(OpplanError, match="grid.*must increase"):
        load_study(tmp_path / "s.yaml")


@pytest.mark.parametrize("name", ["op-vs-paper-grid", "op-arms-replication"])
def test_the_committed_studies_have_the_papers_shape(name: str) -> None:
    from opplan.stages.baselines import candidates
    from opplan.study.run import check_arms, study_params

    cfg, _ = load_study(ROOT / "studies" / f"{name}.yaml")
    check_arms(cfg, ROOT, Path("/nonexistent"))  # every arm's params are valid
    params = study_params(cfg, ROOT, Path("/nonexistent"), cfg.replicates[0])
    assert len(cfg.replicates) >= 3 and cfg.delta == 3 and len(cfg.grid.epochs) >= 5
    assert set(cfg.grid.sampling) == {"cs", "us"} and set(cfg.grid.decays) == {"step", "cosine"}
    assert set(cfg.grid.schedules) == {"l1-lN", "l2-lN", "all"}
    assert len(candidates(params)) == 2 * 2 * 2 * len(cfg.grid.epochs)  # two distinct schedules of [4, 8]
    from opplan.params_file import load_params

    assert params.plan == load_params(ROOT / cfg.base).plan  # the demo's planning, unchanged
    assert list(cfg.arms.values())[0] == {}


def test_every_committed_study_has_its_own_data_seed() -> None:
    seeds = [load_study(path)[0].data.seed for path in sorted((ROOT / "studies").glob("*.yaml"))]
    assert len(seeds) >= 3 and len(set(seeds)) == len(seeds), seeds


def _with_arms(tmp_path: Path, arms: str) -> Path:
    text = (ROOT / "studies" / "smoke.yaml").read_text().replace("arms: {op: {}}", f"arms: {arms}")
    (tmp_path / "s.yaml").write_text(text)
    return tmp_path / "s.yaml"


def test_an_arm_with_the_authors_setting_plans_as_the_authors(tmp_path: Path) -> None:
    from opplan.study.run import study_params

    cfg, _ = load_study(_with_arms(tmp_path, "{op: {}, authors: {plan: {setting: authors}}}"))
    base = study_params(cfg, ROOT, tmp_path / "w", 0)
    authors = study_params(cfg, ROOT, tmp_path / "w", 0, cfg.arms["authors"], "authors")
    assert (base.plan.setting, base.plan.graph, base.plan.val_clips) == ("own", "basic", 3)  # smoke: basic graph, the demo's 3 clips
    assert (authors.plan.setting, authors.plan.graph, authors.plan.val_clips) == ("authors", "basic", 1)
    assert authors.plan.sampling == base.plan.sampling[:1] and authors.plan.lrs == base.plan.lrs


def test_a_bad_arm_is_refused_in_one_line_before_anything_runs(tmp_path: Path) -> None:
    config = _with_arms(tmp_path, "{op: {}, authors: {plan: {setting: authors, val_clips: 3}}}")
    result = CliRunner().invoke(cli, ["study", str(config), "--workdir", str(tmp_path / "w"), "--out",
                                      str(tmp_path / "out"), "--allow-dirty"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "arm 'authors'" in line and "val_clips" in line, line
    assert not (tmp_path / "w" / "data").exists()  # refused before the data was made


@pytest.mark.slow
def test_smoke_study_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["study", str(ROOT / "studies" / "smoke.yaml"), "--workdir", str(tmp_path / "w"), "--out",
            str(tmp_path / "out"), "--allow-dirty"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    import json

    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["comparisons"]["op"]["verdict"] in ("better", "non-inferior", "worse", "inconclusive")
    assert doc["test_videos"] == 9 and len(doc["picks"]) == 2
    assert all(c > 0 for c in doc["cost"]["op"]["core_seconds"])
    table = (tmp_path / "out" / "results.md").read_text()
    assert "interior:" in table and "Grid : OP" in table
    done = sorted((tmp_path / "w").glob("rep*/replicate.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    second = runner.invoke(cli, args)  # every replicate finished: read back, nothing trains again
    assert second.exit_code == 0, second.output
    assert len(done) == 2 and [p.stat().st_mtime_ns for p in done] == stamps
    assert json.loads((tmp_path / "out" / "results.json").read_text())["comparisons"] == doc["comparisons"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_grid_candidate_keeps_its_result_and_drops_its_epoch_states(tiny_shards: Path, tmp_path: Path) -> None:
    params = Params.model_validate(tiny_config(tiny_shards))
    c = Candidate("cs", "l1-lN", "step", 2)
    row = run_candidate(params, tiny_shards, c, tmp_path)
    assert row["status"] == "finished" and 0.0 <= row["val_top1"] <= 1.0 and row["epochs_trained"] == 2
    assert result_path(tmp_path, c).is_file()
    assert not (tmp_path / "work" / "cs_l1-lN_step_2").exists()
