"""The folder list shows the sans-IO boundary: trackerd/core imports no I/O edge.

Each core module is imported alone in a fresh interpreter; if anyio, redis or any
module of trackerd.edges (or trackerd.main) is loaded as a result, the core has
grown an I/O dependency and this test names it.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import trackerd.core

CORE_MODULES = sorted(
    f"trackerd.core.{info.name}" for info in pkgutil.iter_modules(trackerd.core.__path__)
)
FORBIDDEN_PREFIXES = ("anyio", "redis", "trackerd.edges", "trackerd.main", "typer", "asyncio")


def test_core_modules_are_found() -> None:
    assert "trackerd.core.tracker" in CORE_MODULES
    assert "trackerd.core.normalise" in CORE_MODULES


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_edge(module: str) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"prefixes = {FORBIDDEN_PREFIXES!r}\n"
        "bad = sorted(m for m in sys.modules if m.startswith(prefixes))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", f"{module} pulls in I/O modules: {result.stdout}"
