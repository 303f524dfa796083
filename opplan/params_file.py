"""Reading and writing ``params.yaml``: the file as YAML (aliases and keys written twice
refused), validated by :mod:`opplan.config`'s schema, with every error naming the file, the
line, the key, the bad value and what is allowed; the resolved settings written back; the
shipped presets by name. The schema itself, and every key's default and meaning, are in
:mod:`opplan.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from opplan.config import Params
from opplan.errors import ParamsError


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (deepest existing ancestor)."""
    line = None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
            if node is None:  # a missing key: point at the mapping
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _describe(error: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "int", "float"))))
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'", loc
    msg = _excerpt(error["msg"].removeprefix("Value error, "), 300)
    value = error.get("input")
    shown = "" if kind == "missing" or isinstance(value, dict) or "got" in msg else f" (got {_excerpt(repr(value))})"
    return f"'{key}': {msg}{shown}", loc


def _excerpt(text: str, limit: int = 80) -> str:
    """``text``, or its start and its length when longer than ``limit`` (a bad value may be huge)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


MAX_ERRORS = 10
"""Errors listed from one params file; the rest are counted."""


def parse_params(data: Any, *, source: str = "<params>", root: yaml.Node | None = None) -> Params:
    """Validate already-parsed params data; errors name ``source``, line and key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines, errors = [], exc.errors()
        for error in errors[:MAX_ERRORS]:
            text, loc = _describe(error)
            line = _line_of(root, loc) if root is not None else None
            where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {text}")
        if len(errors) > MAX_ERRORS:
            lines.append(f"{source}: ... and {len(errors) - MAX_ERRORS} more errors")
        allowed = _allowed_hint(exc)
        raise ParamsError("\n".join(lines) + allowed) from None


def _allowed_hint(exc: ValidationError) -> str:
    """For unknown keys, list the keys the section does allow."""
    hints = []
    for error in exc.errors():
        if error["type"] != "extra_forbidden":
            continue
        model: type[BaseModel] = Params
        for part in error["loc"][:-1]:
            field = model.model_fields.get(str(part))
            annotation = getattr(field, "annotation", None)
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                break
            model = annotation
        hints.append(f"  allowed keys here: {', '.join(model.model_fields)}")
    return ("\n" + "\n".join(dict.fromkeys(hints))) if hints else ""


MAX_PARAMS_BYTES = 1 << 20
"""A params file is a page of settings; anything larger is not one."""


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (``*name``: an alias bomb expands exponentially, and
    params need none) and keys written twice in one mapping (the later one would silently win)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(mark.line, "aliases (*name) are not allowed in params; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys are reported by the schema
            line = key_node.start_mark.line + 1
            if key in first:
                raise _Refused(line - 1, f"key {_excerpt(str(key))!r} is written twice (lines {first[key]} and "
                                         f"{line}); keep one")
            first[key] = line
        return super().construct_mapping(node, deep=deep)


class _Refused(yaml.YAMLError):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, yaml.Mark("", 0, line, 0, None, None)


def _parse_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    loader = _ParamsLoader(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    finally:
        loader.dispose()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file. Raises :class:`ParamsError` with file, line and key."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PARAMS_BYTES:
            raise ParamsError(f"{path}: {path.stat().st_size} bytes is too large for a params file "
                              f"(at most {MAX_PARAMS_BYTES}); is it the right file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data, root = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        what = "" if isinstance(exc, _Refused) else "not valid YAML: "
        raise ParamsError(f"{where}: {what}{_excerpt(str(getattr(exc, 'problem', exc)), 300)}") from None
    except RecursionError:
        raise ParamsError(f"{path}: not valid params: nested too deeply") from None
    return parse_params(data, source=str(path), root=root)


def dump_params(params: Params) -> str:
    """The resolved settings as YAML, every default filled in; speed-only settings under
    ``runtime`` only."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


PRESETS_DIR = Path(__file__).resolve().parent / "presets"
"""Shipped with the package (package data), so that an installed opplan lists and copies them."""


def preset_path(name: str) -> Path:
    """Path of a shipped preset (``opplan/presets/<name>.yaml``), by name only: never a path elsewhere."""
    known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    if name not in known:
        raise ParamsError(f"unknown preset {_excerpt(repr(name))}; shipped presets: {', '.join(known) or 'none'} "
                          "(a name, not a path; to start from another file, copy it)")
    return PRESETS_DIR / f"{name}.yaml"
