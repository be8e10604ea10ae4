"""Which code runs: an optional C extension module, or the pure-Python code it speeds up.

The one place that decides. A module with a C twin asks ``load(name)`` for it at
import: it gets the extension module if that was built and imports, and the
environment does not force the pure-Python path, else None and runs its own Python
code, which stays the reference (tests hold the two to the same results on the same
inputs). Set ``SERVERTRACKER_PURE_PYTHON=1`` to force the pure-Python path (a bug
report, a comparison). ``describe()`` says which path a program's modules run,
and which are stale (built before their C code last changed: c_build.py)
(DAEMON_MODULES for ``trackerd --version`` and its start-up log line,
LIBRARY_MODULES for ``trackerctl --version``: what a worker's import of
servertracker gets). A worker may call it too:
``accel.describe(accel.LIBRARY_MODULES)``.

The extension modules are listed in setup.py (docs/architecture.md, "The C extension");
tests/test_accel.py holds the two lists below to setup.py's.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Final

#: The environment variable that forces the pure-Python path: any value but "" and "0".
PURE_PYTHON_VARIABLE: Final = "SERVERTRACKER_PURE_PYTHON"
#: The rule, for people (the man pages' ENVIRONMENT section).
PURE_PYTHON_RULE: Final = (
    "Set to any value but empty or 0 (even false or no), it makes the daemon and the "
    "servertracker library run their pure-Python code although the C extension is built "
    "(to compare, or to rule the C code out in a bug report); --version says which "
    "code path runs, and why."
)

#: How to get the C path where it is not built (README.md, "The C extension").
BUILD_HINT: Final = (
    "to build it, install a C compiler and the Python headers (Debian: gcc python3-dev), "
    "then run make again (or pip install -e .); if they are installed, "
    "`.venv/bin/pip install -v -e .` shows why the build failed"
)

#: The extension modules trackerd uses, by import name -> what they speed up.
DAEMON_MODULES: Final[Mapping[str, str]] = {
    "trackerd.core._ccolumns": "columns scan",
    "trackerd.core._cpolicy": "policy decoder",
    "trackerd.edges._cpolicy_loop": "policy loop",
    "trackerd.core._cfirst": "first sightings",
}
#: The extension modules a worker's servertracker uses.
LIBRARY_MODULES: Final[Mapping[str, str]] = {
    "servertracker._record_queue": "record queue",
}

#: Why a module is not loaded (before BUILD_HINT where building it would help).
_NOT_BUILT: Final = "not built"
_NOT_BUILT_HERE: Final = "not built in this tree"

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
            value = os.environ.get(PURE_PYTHON_VARIABLE, "")
            _found[name] = f"{PURE_PYTHON_VARIABLE}={value} is set"
        else:
            try:
                if _beside_its_package(name):
                    _found[name] = importlib.import_module(name)
                else:
                    _found[name] = _NOT_BUILT_HERE
            except ImportError:
                _found[name] = _NOT_BUILT
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


def describe(modules: Mapping[str, str]) -> str:
    """Which path ``modules`` (name -> what it does) give, for people: "C extension"
    when all load, "pure Python: why" when none does for one reason, else
    "partly pure Python: " and each missing one with why; with how to build them
    where they are not built."""
    missing: dict[str, str] = {}
    for name, what in modules.items():
        if load(name) is None:
            missing[what] = str(_found[name])
    reasons = set(missing.values())
    if not missing:
        text = "C extension"
    elif len(missing) == len(modules) and len(reasons) == 1:
        reason = reasons.pop()
        whole = {
            _NOT_BUILT: "the C extension is not built",
            _NOT_BUILT_HERE: "the C extension is not built in this tree",
        }
        text = f"pure Python: {whole.get(reason, reason)}"
    else:
        text = "partly pure Python: " + ", ".join(f"{w} ({why})" for w, why in missing.items())
    if _NOT_BUILT in missing.values() or _NOT_BUILT_HERE in missing.values():
        text += f"; {BUILD_HINT}"
    stale = _stale(modules)
    if stale:
        from servertracker.c_build import REBUILD_HINT

        older = ", ".join(f"{what} (older than {source})" for what, source in stale.items())
        text += f"; stale: {older}, so older C code runs; {REBUILD_HINT}"
    return text


def _stale(modules: Mapping[str, str]) -> dict[str, str]:
    """What each loaded module of ``modules`` does -> the source or header newer than
    its file, where its checkout's setup.py says it is stale (c_build)."""
    from servertracker import c_build  # only for describe(): a worker's import skips it

    found: dict[str, str] = {}
    by_root: dict[Path, dict[str, str]] = {}
    for name, what in modules.items():
        module = _found.get(name)
        file = getattr(module, "__file__", None) if isinstance(module, ModuleType) else None
        root = c_build.checkout_root(file) if file else None
        if root is None:
            continue
        if root not in by_root:
            by_root[root] = c_build.stale_modules(root)
        if name in by_root[root]:
            found[what] = by_root[root][name]
    return found
