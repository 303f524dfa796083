"""The shape of the package's imports: no module imports another that imports it back (also
through imports inside functions), and training code runs without loading MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def opplan_modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "opplan").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The opplan modules ``path`` imports anywhere in it (``from pkg import mod`` counts ``pkg.mod``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from ``start`` back to itself, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for imported in sorted(graph[module]):
            if imported == start:
                return [*path, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*path, imported]))
    return None


def test_no_module_imports_itself_back() -> None:
    modules = opplan_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    cycles = [cycle for name in sorted(graph) if (cycle := cycle_through(name, graph))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_training_code_does_not_load_mlflow() -> None:
    code = ("import sys, opplan.train.transition, opplan.train.schedule, opplan.names; "
            "print(sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


def test_comments_cite_the_design_not_issue_numbers() -> None:
    """A reader of the repository has docs/design.md and the paper, not the issue tracker nor
    the team's notes outside the repository (its style guide, ../shared/)."""
    import re
    pattern = re.compile(r"(?i:\bissue #?\d)|\bSTYLE\b|\.\./shared/")
    paths = [*(ROOT / "opplan").rglob("*.py"), *(ROOT / "pipeline").rglob("*"), *(ROOT / "docs").rglob("*.md"),
             *(ROOT / "bench").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), ROOT / "README.md",
             ROOT / "params.yaml"]
    hits = [f"{path.relative_to(ROOT)}:{number}" for path in paths if path.is_file()
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if pattern.search(line) and path.name != "test_imports.py"]
    assert not hits, "issue numbers or notes outside the repository cited: " + ", ".join(hits)


def test_training_code_imports_nothing_of_tracking_and_only_tracking_imports_mlflow() -> None:
    """The layering of docs/design.md §1: ``train/`` names its metrics from :mod:`opplan.names`, and
    MLflow is imported (anywhere in a file, also inside functions) only under ``opplan/tracking/``."""
    modules = opplan_modules()
    upward = sorted(f"{name} -> {imported}" for name, path in modules.items() if name.startswith("opplan.train")
                    for imported in imports_of(path, modules) if imported.startswith("opplan.tracking"))
    assert not upward, "train/ imports tracking/: " + ", ".join(upward)
    mlflow_users = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names) and not name.startswith("opplan.tracking"):
                mlflow_users.append(name)
    assert not mlflow_users, "mlflow imported outside opplan/tracking/: " + ", ".join(sorted(set(mlflow_users)))
