"""A stale C extension (built before its C code last changed) is named, not run silently:
`trackerd --version` / `trackerctl --version` say "stale", bench refuses (c_build.py)."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _support, trees
from servertracker import accel, c_build

ROOT = Path(__file__).resolve().parent.parent
TRACKERCTL = Path(sys.executable).parent / "trackerctl"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def age(path: Path, seconds: int) -> None:
    """Set path's times to a fixed point plus seconds: mtimes, not sleeps, order files."""
    when = 1_700_000_000 + seconds
    os.utime(path, (when, when))


def fake_tree(tmp_path: Path) -> Path:
    """This project's setup.py and, for each module it lists, its sources and headers
    (empty) and a file in its built module's place, all as old as each other."""
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    extensions, depends = c_build.setup_lists(tmp_path)
    for name, sources in extensions.items():
        for relative in [*sources, *depends.get(name, [])]:
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / relative).touch()
            age(tmp_path / relative, 0)
        module = (tmp_path / sources[0]).parent / (name.rpartition(".")[2] + SUFFIX)
        module.touch()
        age(module, 10)
    return tmp_path


def test_the_lists_are_setup_pys() -> None:
    extensions, depends = c_build.setup_lists(ROOT)
    assert set(extensions) == set(accel.DAEMON_MODULES) | set(accel.LIBRARY_MODULES)
    assert depends["trackerd.core._cfirst"] == ["trackerd/core/_blake2b.h"]


def test_a_module_older_than_a_source_or_header_is_stale(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    assert c_build.stale_modules(root) == {}
    age(root / "trackerd/core/_ccolumns.c", 20)
    assert c_build.stale_modules(root) == {"trackerd.core._ccolumns": "trackerd/core/_ccolumns.c"}
    # A header shared by two modules makes both stale; the newest change is named.
    age(root / "trackerd/core/_cpolicy.c", 20)
    age(root / "trackerd/core/_cpolicy_parse.h", 30)
    stale = c_build.stale_modules(root)
    assert stale["trackerd.core._cpolicy"] == "trackerd/core/_cpolicy_parse.h"
    assert stale["trackerd.edges._cpolicy_loop"] == "trackerd/core/_cpolicy_parse.h"
    assert "trackerd.core._cfirst" not in stale
    # A module not built is not stale (accel says "not built"); a rebuild is not stale.
    (root / "trackerd/core" / ("_ccolumns" + SUFFIX)).unlink()
    assert "trackerd.core._ccolumns" not in c_build.stale_modules(root)
    age(root / "trackerd/edges" / ("_cpolicy_loop" + SUFFIX), 40)
    assert "trackerd.edges._cpolicy_loop" not in c_build.stale_modules(root)


def test_no_setup_py_no_staleness(tmp_path: Path) -> None:
    """An install without its sources (a wheel) has nothing to compare."""
    assert c_build.stale_modules(tmp_path) == {}
    assert c_build.checkout_root(str(tmp_path / "a" / ("m" + SUFFIX))) is None


def test_bench_refuses_a_stale_tree(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    trees.refuse_stale(root)  # fresh: goes on
    age(root / "client/servertracker/_record_queue.c", 20)
    with pytest.raises(SystemExit) as refused:
        trees.refuse_stale(root)
    text = str(refused.value.code)
    assert "servertracker._record_queue (older than client/servertracker/_record_queue.c)" in text
    assert f"make -C {root}" in text
    # --baseline DIR refuses it too.
    for package in ("trackerd", "client/servertracker"):
        (root / package / "__init__.py").touch()
    with pytest.raises(SystemExit):
        trees.baseline_tree(root)


def test_this_checkout_s_benchmarks_check_after_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[Path] = []
    monkeypatch.setattr(trees, "refuse_stale", checked.append)
    _support.arguments("bench.x", None).parse_args([])
    assert checked == [trees.THIS_ROOT]


@pytest.mark.skipif(
    not any((ROOT / "client/servertracker").glob("_record_queue.*so")),
    reason="the C extension is not built",
)
def test_trackerctl_version_says_stale(tmp_path: Path) -> None:
    """A copy of the library with its built module, then its C source changed."""
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copytree(
        ROOT / "client/servertracker",
        tmp_path / "client/servertracker",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env = {k: v for k, v in os.environ.items() if k != accel.PURE_PYTHON_VARIABLE}
    env["PYTHONPATH"] = str(tmp_path / "client")

    def version() -> str:
        result = subprocess.run(
            [str(TRACKERCTL), "--version"], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    (module,) = (tmp_path / "client/servertracker").glob("_record_queue.*so")
    source = tmp_path / "client/servertracker/_record_queue.c"
    age(source, 0)
    age(module, 10)
    assert version().endswith("servertracker library: C extension\n")
    age(source, 20)
    out = version()
    assert "servertracker library: C extension; stale: record queue (older than " in out
    assert "client/servertracker/_record_queue.c)" in out and c_build.REBUILD_HINT in out
