"""Loading a benchmark script in tests: benchmarks/ is no package (this module holds no tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_benchmark(name: str, alias: str | None = None) -> ModuleType:
    """benchmarks/<name>.py as module `alias` (default `name`), registered before it runs so
    the scripts it imports by name find each other; benchmarks/ goes on sys.path for those."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(alias or name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias or name] = module
    spec.loader.exec_module(module)
    return module
