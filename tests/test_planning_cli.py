"""``opplan graph`` and ``opplan knee`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from opplan.cli import cli
from opplan.planning.fitting import evaluate

EXP = (0.8, -0.6, -0.15, 0.002, -1e-4)  # exponential, maximiser at t = 23.4


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke ``opplan ...`` in an empty folder (no params.yaml); returns the click Result."""
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def write_curve(path: Path, values, first_epoch: int = 0) -> Path:
    rows = "".join(f"{first_epoch + i},{v:.10f}\n" for i, v in enumerate(values))
    path.write_text("epoch,val_acc\n" + rows, encoding="utf-8")
    return path


def test_graph_json_default_is_two_extended_3x3_graphs(run):
    result = run("graph", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["edges"]) == 2 * 18 and len(data["states"]) == 1 + 2 * 9
    assert data["states"][0] == "S0" and data["final_states"] == ["cs/64/0.0001", "us/64/0.0001"]
    assert ["cs/64/0.01", "cs/32/0.001"] in data["edges"] and ["us/32/0.01", "us/16/0.001"] in data["edges"]


@pytest.mark.parametrize("args, edges", [(["--kind", "basic"], 28), (["--sampling", "cs", "--max-jump", "2"], 29),
                                         (["--lengths", "8,16", "--lrs", "0.1,0.01", "--sampling", "us"], 7)])
def test_graph_options(run, args, edges):
    result = run("graph", "--json", *args)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["edges"]) == edges


def test_graph_text_params_file_and_png(run, tmp_path):
    (tmp_path / "params.yaml").write_text(
        "plan:\n  clip_lengths: [8, 16]\n  lrs: [0.1, 0.01]\n  sampling: [cs]\n  graph: basic\n", encoding="utf-8")
    result = run("graph", "--png", "out/graph.png")
    assert result.exit_code == 0, result.output
    assert "basic graph, max_jump 1: 4 states, 6 edges (cs: 6)" in result.output
    assert "cs/8/0.1 -> cs/8/0.01" in result.output
    assert (tmp_path / "out" / "graph.png").read_bytes()[:4] == b"\x89PNG"
    assert "7 edges" in run("graph", "--kind", "extended").output  # an option overrides the file


def test_graph_bad_options_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["graph", "--lengths", "32,16"])
    assert result.exit_code == 2 and "strictly increasing" in result.output
    result = CliRunner().invoke(cli, ["graph", "--final", "cs/99/0.01"])
    assert result.exit_code == 2 and "cs/99/0.01" in result.output
    result = CliRunner().invoke(cli, ["graph", "--params", "missing.yaml"])
    assert result.exit_code == 2 and "missing.yaml" in result.output


def test_knee_json_on_a_generated_curve(run, tmp_path):
    curve = write_curve(tmp_path / "curve.csv", evaluate("exponential", EXP, np.arange(50)))
    result = run("knee", str(curve), "--json", "--delay", "10")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["t_star"], data["chosen_epoch"], data["stop_epoch"]) == (23, 23, 33)
    assert data["function"] == "exponential" and data["reason"] == "knee"
    np.testing.assert_allclose(data["params"], EXP, rtol=1e-3, atol=1e-7)
    assert data["rmse"] < 1e-6 and data["r2"] > 0.999


def test_knee_curve_from_epoch_1_and_ending_early(run, tmp_path):
    curve = write_curve(tmp_path / "curve.csv", evaluate("exponential", EXP, np.arange(1, 28)), first_epoch=1)
    data = json.loads(run("knee", str(curve), "--json", "--function", "power").output)
    assert data["stop_epoch"] is None and data["function"] == "power"
    assert abs(data["t_star"] - 23) <= 2 and data["chosen_epoch"] == data["t_star"]
    text = run("knee", str(curve)).output
    assert "before the rule stops" in text and "knee t* =" in text


@pytest.mark.parametrize("content, message", [
    ("epoch,acc\n0,0.1\n", "curve.csv:1: expected a header"),
    ("epoch,val_acc\n0,0.1\n1,abc\n", "curve.csv:3: val_acc 'abc'"),
    ("epoch,val_acc\n0,0.1\n0,0.2\n", "curve.csv:3: epochs must increase"),
    ("epoch,val_acc\n5,0.1\n", "curve.csv:2: the curve must start at epoch 0 or 1"),
    ("epoch,val_acc\n0,0.1,7\n", "curve.csv:2: expected 2 fields"),
    # a field over csv's 128 KiB limit, values no accuracy can take
    ("epoch,val_acc\n0,0.1\n1," + "9" * 200_000 + "\n", "curve.csv:3: not valid CSV: field larger than field limit"),
    ("epoch,val_acc\n0,0.1\n1,\"" + "9" * 100_000 + "\"\n", "... (100000 characters) must be a fraction in [0, 1]"),
    ("epoch,val_acc\n0,0.1\n1,inf\n", "curve.csv:3: val_acc 'inf' must be a fraction in [0, 1]"),
    ("epoch,val_acc\n0,0.1\n1,1e308\n", "curve.csv:3: val_acc '1e308' must be a fraction in [0, 1]"),
    ("epoch,val_acc\n0,0.1\n1,-0.2\n", "curve.csv:3: val_acc '-0.2' must be a fraction in [0, 1]"),
    ("epoch,val_acc\n0,0.1\n1,42\n", "divide percentages by 100"),
    ("epoch,val_acc\n0,0.1\n1,0.2\x00\n", "curve.csv:3: "),
    ("epoch,val_acc\n", "no data rows"),
])
def test_knee_bad_csv_names_file_and_line(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "curve.csv").write_text(content, encoding="utf-8")
    result = CliRunner().invoke(cli, ["knee", "curve.csv"])
    assert result.exit_code == 2 and message in result.output and len(result.output) < 300


def test_knee_table(run, tmp_path):
    folder = tmp_path / "curves"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_curve(folder / f"c{i}.csv", evaluate("exponential", EXP, np.arange(40)) + rng.normal(0, 0.003, 40))
    result = run("knee", "--table", str(folder))
    assert result.exit_code == 0, result.output
    assert "over 3 curves" in result.output
    assert all(f in result.output for f in ("power", "multi-power", "exponential", "multi-exponential"))
    data = json.loads(run("knee", "--table", str(folder), "--json").output)
    assert data["curves"] == 3 and data["functions"]["exponential"]["fitted"] == 3
    assert data["functions"]["exponential"]["rmse"] == pytest.approx(0.003, rel=0.4)


def test_knee_needs_exactly_one_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(cli, ["knee"]).exit_code == 2
    assert CliRunner().invoke(cli, ["knee", "a.csv", "--table", "."]).exit_code == 2
