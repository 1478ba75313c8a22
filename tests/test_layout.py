"""The layout holds: commands never import each other, the library never imports a command, functions stay
short, and only gemini_ray/paths.py tells a URI from a path. Read from the source (ast), nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gemini_ray"
COMMANDS = sorted(p for p in (PACKAGE / "commands").glob("*.py") if p.name != "__init__.py")
MAX_FUNCTION_LINES = 80


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every gemini_ray module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from gemini_ray.commands import tune`
    return {name for name in found if name.startswith("gemini_ray")}


def _is_command(name: str) -> bool:
    return name.startswith("gemini_ray.commands.") or name == "gemini_ray.cli"


def test_there_are_commands():
    assert {p.stem for p in COMMANDS} == {"distill", "label", "tune", "eval", "ablate", "curve"}


@pytest.mark.parametrize("path", COMMANDS, ids=[p.stem for p in COMMANDS])
def test_a_command_imports_no_other_command(path):
    me = _module(path)
    others = sorted(n for n in _imports(path) if _is_command(n) and not n.startswith(me))
    assert others == [], f"{me} imports the command(s) {others}: move what they share into the library"


def test_the_library_imports_no_command():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        if _is_command(module) or module in ("gemini_ray.commands", "gemini_ray.__main__"):
            continue
        bad = sorted(n for n in _imports(path) if _is_command(n))
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_the_layout_check_catches_a_command_import(tmp_path):
    """Control: the parser sees a function-level command-to-command import."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from gemini_ray.commands.distill import distill\n    from gemini_ray.commands "
                    "import label\n")
    assert {"gemini_ray.commands.distill", "gemini_ray.commands.label"} <= _imports(fake)


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{_module(path)}.{node.name}: {lines} lines")
    assert long == []


def test_only_paths_tells_a_uri_from_a_path():
    """No inline `"://" in x` outside gemini_ray/paths.py: is_uri / is_remote / local_path say it once."""
    seen = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "paths.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("://", "file://"):
                seen.append(f"{_module(path)}:{node.lineno}")
    assert seen == []
