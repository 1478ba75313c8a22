"""Load a script under benchmarks/ as a module (benchmarks/ is not a package), to test its pure parts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def benchmark_module(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
