"""Which code runs: an optional C extension module, or the pure-Python code it speeds up.

The one place that decides. A module with a C twin asks ``load(name)`` for it at
import: it gets the extension module if that was built and imports, and the
environment does not force the pure-Python path, else None and runs its own Python
code, which stays the reference (tests hold the two to the same results on the same
inputs). Set ``SERVERTRACKER_PURE_PYTHON=1`` to force the pure-Python path (a bug
report, a comparison); ``describe()`` says which path runs, for ``trackerd
--version``, its start-up log line and trackerctl status.

The extension modules are listed in setup.py (docs/architecture.md, "The C extension").
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Final

#: The environment variable that forces the pure-Python path: any value but "" and "0".
PURE_PYTHON_VARIABLE: Final = "SERVERTRACKER_PURE_PYTHON"

#: What load() found, by module name: the module, or why not (for describe()).
_found: dict[str, ModuleType | str] = {}


def forced_pure() -> bool:
    """Whether the environment forces the pure-Python path."""
    return os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """The C extension module ``name`` if it is to run, else None (the caller's Python
    code runs). Decided once per module and process."""
    if name not in _found:
        if forced_pure():
            _found[name] = f"{PURE_PYTHON_VARIABLE} is set"
        else:
            try:
                if _beside_its_package(name):
                    _found[name] = importlib.import_module(name)
                else:
                    _found[name] = "the C extension is not built in this tree"
            except ImportError:
                _found[name] = "the C extension is not built"
    found = _found[name]
    return found if isinstance(found, ModuleType) else None


def _beside_its_package(name: str) -> bool:
    """Whether the extension module ``name`` would come from its own package's
    folder (found, not loaded). An editable install's finder answers for a
    top-level package's submodules from its own checkout: a tree put first on
    PYTHONPATH without a build of its own (a benchmark's baseline) would otherwise
    load another tree's C code. Raises ImportError where there is none."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(name)
    package = sys.modules.get(name.rpartition(".")[0])
    folders = [os.path.realpath(folder) for folder in getattr(package, "__path__", [])]
    return not folders or os.path.realpath(os.path.dirname(spec.origin)) in folders


def describe(name: str) -> str:
    """Which path module ``name`` gives, for people: "C extension", or "pure Python: "
    and why."""
    load(name)
    found = _found[name]
    return "C extension" if isinstance(found, ModuleType) else f"pure Python: {found}"
