"""``train.cpu_isa`` / ``train.cpu_threads``: what makes CPU results differ between machines,
pinned (docs/determinism.md, "Across machines")."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opplan.config import Params
from opplan.device import CPU_ISA_ENV, pin_cpu

ROOT = Path(__file__).resolve().parent.parent

# Five SGD steps of the demo's model on fixed data; prints the capability torch used and a
# hash of the weights. How the process is pinned comes first in the script.
TRAIN = """
import hashlib, torch
from opplan.models.registry import build_model
torch.manual_seed(0)
m = build_model("dg_p3d_tiny", 5, width=8)
opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
g = torch.Generator().manual_seed(1)
x = torch.randn(8, 3, 4, 24, 24, generator=g); y = torch.randint(0, 5, (8,), generator=g)
for _ in range(5):
    opt.zero_grad(); out = m(x); out = out[0] if isinstance(out, (tuple, list)) else out
    torch.nn.functional.cross_entropy(out, y).backward(); opt.step()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), digest)
"""


def _run(prefix: str, env: dict[str, str] | None = None) -> tuple[str, int, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", prefix + TRAIN], capture_output=True, text=True, check=True,
                         env={**clean, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=ROOT).stdout.split()
    return out[0], int(out[1]), out[2]


@functools.cache
def _native_capability() -> str:
    return _run("")[0]


@pytest.mark.skipif(_native_capability() in ("DEFAULT",), reason="this CPU has no AVX2")
def test_pin_cpu_computes_what_the_environment_of_an_avx2_machine_computes():
    pinned = _run("from opplan.device import pin_cpu; pin_cpu('avx2', 1)\n")
    by_env = _run("import torch; torch.set_num_threads(1)\n", env=CPU_ISA_ENV["avx2"])
    assert pinned[0] == "AVX2" and pinned[1] == 1
    assert pinned == by_env


def test_pinned_threads_are_set_and_reproduce():
    one = _run("from opplan.device import pin_cpu; pin_cpu('native', 1)\n")
    again = _run("from opplan.device import pin_cpu; pin_cpu('native', 1)\n")
    assert one[1] == 1 and one == again


@pytest.mark.skipif(not _native_capability().startswith("AVX512"), reason="needs an AVX-512 CPU to differ from AVX2")
def test_on_an_avx512_machine_the_pin_changes_the_result_and_refuses_when_too_late():
    native = _run("import torch; torch.set_num_threads(1)\n")
    pinned = _run("from opplan.device import pin_cpu; pin_cpu('avx2', 1)\n")
    assert native[2] != pinned[2]  # the instruction set is what made machines disagree
    late = subprocess.run(
        [sys.executable, "-c", "import torch; torch.ones(64).sum(); from opplan.device import pin_cpu\n"
                               "pin_cpu('avx2', None)"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert late.returncode != 0 and "train.cpu_isa: avx2 asked for, but torch computes with AVX512" in late.stderr


def test_cpu_settings_are_validated():
    assert Params.model_validate({"train": {"cpu_isa": "avx2", "cpu_threads": 2}}).train.cpu_threads == 2
    for bad in ({"cpu_isa": "avx512"}, {"cpu_threads": 0}):
        with pytest.raises(ValueError):
            Params.model_validate({"train": bad})


def test_native_leaves_the_environment_alone(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    threads = torch.get_num_threads()
    pin_cpu("native", None)
    assert "ATEN_CPU_CAPABILITY" not in os.environ and "ONEDNN_MAX_CPU_ISA" not in os.environ
    assert torch.get_num_threads() == threads
