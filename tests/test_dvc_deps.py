"""``dvc.yaml`` names every source file a stage runs, so ``dvc repro`` never skips a stage whose
code changed. Each stage's script is followed through its imports (with ``ast``, every
``import`` in the file, also inside functions and ``TYPE_CHECKING`` blocks) to the files of
the project, and each file must be a dependency of the stage, or lie in a folder that is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "opplan"


def module_file(name: str, script_dir: Path) -> Path | None:
    """The project file of module ``name`` (``opplan.x.y``, or a sibling of a stage script)."""
    parts = name.split(".")
    base = ROOT if parts[0] == PACKAGE else script_dir
    for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST) -> tuple[set[str], set[str]]:
    """``(sources, bound)``: every module an import runs (``from x import y`` runs ``x``) and
    every name it binds that may be a module or package (``import x.y``, ``from x import y``)."""
    sources: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            sources.add(node.module)
            bound |= {f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"}
    return sources, bound


def with_parents(name: str) -> list[str]:
    """``opplan.a.b`` -> ``opplan``, ``opplan.a``, ``opplan.a.b``: importing one runs every ``__init__``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def source_files(script: Path) -> set[Path]:
    """The project files that running ``script`` may execute. A package imported as a whole
    (``from opplan import tracking``) counts as its whole folder: its attributes may load any
    of its modules."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        sources, bound = imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        for name in sources | bound:
            for module in with_parents(name):
                found = module_file(module, script.parent)
                if found is None:
                    continue
                todo.append(found)
                if found.name == "__init__.py" and module == name and name in bound:
                    todo += sorted(found.parent.rglob("*.py"))
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def script_of(stage: dict) -> Path:
    """``python pipeline/<stage>.py`` -> that script."""
    words = stage["cmd"].split()
    return ROOT / next(w for w in words if w.endswith(".py"))


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_depends_on_every_source_file_it_runs(name: str) -> None:
    stage = stages()[name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    missing = sorted(str(p.relative_to(ROOT)) for p in source_files(script_of(stage)) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} runs these files but does not depend on them: {missing}"


def test_the_import_walk_finds_what_a_stage_runs() -> None:
    """The walk itself: plan's script reaches the planner, the stage helpers and the package root."""
    found = {str(p.relative_to(ROOT)) for p in source_files(ROOT / "pipeline" / "plan.py")}
    assert {"pipeline/_stage.py", "opplan/__init__.py", "opplan/stages/plan.py", "opplan/planning/dp.py",
            "opplan/planning/decisions.py", "opplan/planning/records.py", "opplan/planning/scheduler.py",
            "opplan/tracking/lifecycle.py", "opplan/train/checkpoint.py", "opplan/config.py"} <= found


def test_a_dependency_left_out_is_named() -> None:
    plan = stages()["plan"]
    deps = [d for d in plan["deps"] if d != "opplan/tracking"]
    missing = {str(p.relative_to(ROOT)) for p in source_files(script_of(plan)) if not covered(p, deps)}
    assert {"opplan/tracking/lifecycle.py", "opplan/tracking/client.py"} <= missing
