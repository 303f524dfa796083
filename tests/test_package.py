"""The package stands alone: a wheel built from the project, installed into a fresh virtual
environment, lists and copies every preset and validates it, run outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "DVC_ROOT")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def test_an_installed_wheel_ships_every_preset(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "opplan", source / "opplan", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                 str(tmp_path / "dist"), str(source)], tmp_path)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("opplan-*.whl"))

    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path).returncode == 0
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    # torch, mlflow & co. from this environment's site-packages (not its editable opplan: a
    # directory named in a .pth file has its own .pth files ignored), opplan from the wheel
    Path(site.stdout.strip(), "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], tmp_path)
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import opplan; print(opplan.__file__)"], elsewhere)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    opplan = str(venv / "bin" / "opplan")
    unknown = run([opplan, "init-params", "--preset", "nope"], elsewhere)
    presets = sorted(p.stem for p in (ROOT / "opplan" / "presets").glob("*.yaml"))
    assert unknown.returncode == 2 and all(name in unknown.stderr for name in presets), unknown.stderr
    copied = run([opplan, "init-params", "--preset", "ucf101"], elsewhere)
    assert copied.returncode == 0, copied.stderr
    assert (elsewhere / "params.yaml").read_bytes() == (ROOT / "opplan" / "presets" / "ucf101.yaml").read_bytes()
    checked = run([opplan, "check-params"], elsewhere)
    assert checked.returncode == 0, checked.stderr
    assert "dg_p3d_r50" in checked.stdout
