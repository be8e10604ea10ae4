"""Whether a checkout's built C extension modules are older than their C code.

After `git pull` or an edit without `make`, an extension module built in place
(setup.py's build, ``pip install -e .``) still imports and runs the old C code.
This module finds such a module: one whose file is older than one of its
sources or headers, as setup.py lists them (C_EXTENSIONS and DEPENDS, read
with ast, not run: the one list, here as for pip). accel.describe() adds what
it finds to ``trackerd --version`` and ``trackerctl --version`` ("stale");
bench refuses to measure such a tree (bench/_support.py, bench/trees.py); the
Makefile rebuilds when ``--version`` says so. An install without its sources
beside it (a wheel) has nothing to compare: never stale.
"""

from __future__ import annotations

import ast
import importlib.machinery
import os
from pathlib import Path

SETUP_PY = "setup.py"
#: How to rebuild, for people.
REBUILD_HINT = "rebuild it: make, or .venv/bin/pip install -e . --no-deps"


def setup_lists(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """setup.py's C_EXTENSIONS and DEPENDS in ``root`` (import name -> files relative
    to root); empty where there is no setup.py or no such list."""
    try:
        tree = ast.parse((root / SETUP_PY).read_text(encoding="utf-8"))
    except (OSError, ValueError, SyntaxError):
        return {}, {}
    lists: dict[str, dict[str, list[str]]] = {}
    for node in tree.body:
        target: ast.expr
        expression: ast.expr | None
        if isinstance(node, ast.AnnAssign):
            target, expression = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, expression = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and expression is not None:
            try:
                value = ast.literal_eval(expression)
            except ValueError:
                continue
            if isinstance(value, dict):
                lists[target.id] = value
    return lists.get("C_EXTENSIONS", {}), lists.get("DEPENDS", {})


def built_file(root: Path, name: str, sources: list[str]) -> Path | None:
    """The file of module ``name`` built in place for this interpreter (beside its
    first source), or None where it is not built."""
    if not sources:
        return None
    folder = (root / sources[0]).parent
    stem = name.rpartition(".")[2]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def stale_modules(root: Path) -> dict[str, str]:
    """Import name -> the newest of its sources and headers (relative to root) that
    is newer than its built module, for each module of root's setup.py built there."""
    extensions, depends = setup_lists(root)
    stale: dict[str, str] = {}
    for name, sources in extensions.items():
        module = built_file(root, name, sources)
        if module is None:
            continue
        built = module.stat().st_mtime_ns
        newest: tuple[int, str] | None = None
        for relative in [*sources, *depends.get(name, [])]:
            try:
                changed = (root / relative).stat().st_mtime_ns
            except OSError:
                continue
            if changed > built and (newest is None or changed > newest[0]):
                newest = (changed, relative)
        if newest is not None:
            stale[name] = newest[1]
    return stale


def checkout_root(module_file: str) -> Path | None:
    """The checkout whose setup.py builds the extension module at ``module_file``
    in place: the nearest folder above it with a setup.py, or None (a wheel's
    install)."""
    for folder in Path(os.path.realpath(module_file)).parents[:4]:
        if (folder / SETUP_PY).is_file():
            return folder
    return None
