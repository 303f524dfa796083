"""Ctrl-C and SIGTERM in the middle of a command or a stage: one line, what was kept, how to
resume, and the shell's exit status (docs/design.md §11). The signal is sent by the work itself
(the process signals itself where the work would be), so the test does not depend on timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Replaces the stage's work with a process that receives the signal while it works.
HARNESS = """
import os, signal, sys, time
import opplan.data.prepare as prepare
import opplan.stages.plan as plan

# A shell starts a background job (`make test &`, a CI runner) with SIGINT ignored, and Python
# then leaves it ignored, as nohup intends; a user's Ctrl-C reaches a foreground job, whose
# SIGINT raises KeyboardInterrupt. The harness is that foreground job, wherever the suite runs.
signal.signal(signal.SIGINT, signal.default_int_handler)

def work(*args, **kwargs):
    os.kill(os.getpid(), signal.{signal})
    time.sleep(30)

prepare.prepare_from_params = work
plan.run_plan = work
{entry}
"""
CLI = "from opplan.cli import main; sys.argv = ['opplan', *sys.argv[1:]]; main()"
STAGE = ("sys.path.insert(0, {pipeline!r}); sys.argv = [{script!r}, *sys.argv[1:]]; "
         "from _stage import run_stage; run_stage(plan.run_plan if 'plan' in {script!r} else prepare.prepare_from_params)")


def run(tmp_path: Path, signame: str, entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    code = HARNESS.format(signal=signame, entry=entry)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    ("signame", "args", "status", "expected"),
    [
        ("SIGINT", ["data", "prepare"], 130, "opplan: data interrupted (SIGINT): the videos and shards written so far "
                                             "are kept; run `opplan data` again to resume"),
        ("SIGTERM", ["plan"], 143, "opplan: plan terminated (SIGTERM): finished transitions"),
    ],
)
def test_a_signal_during_a_command_ends_it_in_one_line(tmp_path: Path, signame: str, args: list[str], status: int,
                                                       expected: str) -> None:
    done = run(tmp_path, signame, CLI, *args)
    assert done.returncode == status, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith(expected), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("signame", "script", "status"), [("SIGINT", "prepare.py", 130), ("SIGTERM", "plan.py", 143)])
def test_a_signal_during_a_dvc_stage_ends_it_in_one_line(tmp_path: Path, signame: str, script: str,
                                                         status: int) -> None:
    entry = STAGE.format(pipeline=str(ROOT / "pipeline"), script=str(ROOT / "pipeline" / script))
    done = run(tmp_path, signame, entry)
    assert done.returncode == status, done.stderr
    stage = script.removesuffix(".py")
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f"run `dvc repro {stage}` again to resume"), done.stderr
    assert signal.Signals(status - 128).name == signame
