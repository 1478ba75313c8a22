"""The layout holds: commands never import each other, the library never imports a command, functions stay
short, the import graph is shallow, has no cycle and never climbs from a wing to one above it, and only
gemini_ray/paths.py tells a URI from a path. Read from the source (ast), nothing imported. Each check has a
control that shows it catches what it forbids."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gemini_ray"
COMMANDS = sorted(p for p in (PACKAGE / "commands").glob("*.py") if p.name != "__init__.py")
MAX_FUNCTION_LINES = 60
MAX_LAYERS = 11
"""A module's layer is 1 + the highest layer among the gemini_ray modules it imports (1: it imports none)."""
WINGS = (
    {"gemini_ray", "errors", "metric_names", "process_memory", "ray_compat"},
    {"config", "paths", "losses"},
    {"models"},
    {"data"},
    {"cluster", "evaluation"},
    {"training"},
    {"jobs"},
    {"commands"},
    {"cli", "__main__"},
)
"""The package's wings (sub-packages and top-level modules; "gemini_ray" is its __init__), from the bottom
up: a module imports from its own tier and the tiers below, never from a tier above."""
TIER = {wing: tier for tier, wings in enumerate(WINGS) for wing in wings}


def _module(path: Path, package: Path = PACKAGE) -> str:
    return ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, module: str = "") -> set[str]:
    """Every gemini_ray name a file imports, at any depth (function-level imports included); a relative import
    is resolved against `module`, the file's own dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:  # `from . import x` in gemini_ray/data/cache.py: gemini_ray.data.x
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from gemini_ray.commands import tune`
    return {name for name in found if name == "gemini_ray" or name.startswith("gemini_ray.")}


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, for every module of the package under `package`."""
    files = {_module(p, package): p for p in package.rglob("*.py")}
    return {m: (_imports(p, m) & files.keys()) - {m} for m, p in files.items()}


def _layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer (a module in a cycle counts the cycle once)."""
    layers: dict[str, int] = {}

    def layer(m: str, path: frozenset = frozenset()) -> int:
        if m not in layers:
            below = [layer(d, path | {m}) for d in graph.get(m, ()) if d not in path | {m}]
            layers[m] = 1 + max(below, default=0)
        return layers[m]

    for m in graph:
        layer(m)
    return layers


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle per set of modules that import each other (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for d in graph.get(m, ()):
            if d not in index:
                visit(d)
                low[m] = min(low[m], low[d])
            elif d in stack:
                low[m] = min(low[m], index[d])
        if low[m] == index[m]:
            component = [stack.pop()]
            while component[-1] != m:
                component.append(stack.pop())
            if len(component) > 1 or m in graph.get(m, ()):
                found.append(sorted(component))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each import of a module in a wing of a higher tier than the importer's."""
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if TIER.get(_wing(d), 0) > TIER.get(_wing(m), 0))


def _long_functions(package: Path = PACKAGE) -> list[str]:
    long = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{_module(path, package)}.{node.name}: {lines} lines")
    return sorted(long)


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


def test_no_function_is_longer_than_60_lines():
    assert _long_functions() == []


def test_the_length_check_catches_a_61_line_function(tmp_path):
    """Control: a function of 61 lines (nested in a class) is caught; one of 60 is not."""
    package = tmp_path / "gemini_ray"
    package.mkdir()
    body = "".join(f"        x{i} = {i}\n" for i in range(59))
    (package / "fake.py").write_text(f"class C:\n    def long(self):\n{body}        return 0\n\n"
                                     f"    def fits(self):\n{body}\n")
    found = _long_functions(package)
    assert [line.split(": ")[1] for line in found] == ["61 lines"] and found[0].endswith("long: 61 lines")


def test_every_module_belongs_to_a_wing():
    assert sorted({_wing(m) for m in _graph()} - TIER.keys()) == []  # a new wing is placed in WINGS


def test_the_import_graph_has_at_most_11_layers():
    layers = _layers(_graph())
    top = sorted(layers, key=layers.get, reverse=True)[:3]
    assert max(layers.values()) <= MAX_LAYERS, {m: layers[m] for m in top}


def test_the_import_graph_has_no_cycle():
    assert _cycles(_graph()) == []


def test_no_module_imports_a_wing_above_its_own():
    assert _upward(_graph()) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """Control: the graph is built from every import statement: at module level, inside a function, relative."""
    package = tmp_path / "gemini_ray"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "config.py").write_text("from gemini_ray.errors import ConfigError\n")
    (package / "data" / "__init__.py").write_text("from . import cache\n")
    (package / "data" / "cache.py").write_text("def f():\n    from ..config import Config\n    from .. import errors\n")
    assert _graph(package) == {"gemini_ray": set(), "gemini_ray.errors": set(),
                               "gemini_ray.config": {"gemini_ray.errors"},
                               "gemini_ray.data": {"gemini_ray.data.cache"},
                               "gemini_ray.data.cache": {"gemini_ray", "gemini_ray.config", "gemini_ray.errors"}}


def test_the_layer_check_catches_a_graph_12_modules_deep():
    """Control: a chain m11 -> m10 -> ... -> m0 has 12 layers; a cycle does not loop forever."""
    chain = {f"m{i}": {f"m{i - 1}"} if i else set() for i in range(12)}
    assert _layers(chain)["m11"] == 12 and max(_layers(chain).values()) > MAX_LAYERS
    assert _layers({"a": {"b"}, "b": {"a"}}) in ({"a": 2, "b": 1}, {"a": 1, "b": 2})


def test_the_cycle_check_catches_a_cycle_through_three_modules():
    """Control: a -> b -> c -> a is found (once), the module beside it that only imports into it is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"], ["e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_wing_check_catches_an_upward_import():
    """Control: config importing from jobs, or models from training, climbs; jobs importing config does not."""
    graph = {"gemini_ray.config": {"gemini_ray.errors", "gemini_ray.jobs.evaluate"},
             "gemini_ray.models.build": {"gemini_ray.training.watch"},
             "gemini_ray.jobs.evaluate": {"gemini_ray.config", "gemini_ray.cluster.session"},
             "gemini_ray.cluster.session": {"gemini_ray.evaluation.sets"}}  # the same tier: allowed
    assert _upward(graph) == ["gemini_ray.config -> gemini_ray.jobs.evaluate",
                              "gemini_ray.models.build -> gemini_ray.training.watch"]


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
