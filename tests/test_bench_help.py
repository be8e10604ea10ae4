"""Every bench module answers --help with its usage, and runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
#: The bench modules that other bench modules import, and that run nothing themselves.
LIBRARIES = ("__init__.py", "_support.py", "workload.py", "trees.py", "redis_best.py",
             "seed_design.py", "slow_calls.py")  # fmt: skip
MODULES = sorted(
    "bench" if path.name == "__main__.py" else f"bench.{path.stem}"
    for path in (ROOT / "bench").glob("*.py")
    if path.name not in LIBRARIES
)


def test_every_runnable_bench_module_is_listed() -> None:
    assert {"bench", "bench.burst", "bench.compare", "bench.memory"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_help_prints_usage_and_runs_nothing(module: str) -> None:
    # A benchmark that ignored --help would run for minutes: the timeout catches it.
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m {module} "), result.stdout[:500]
    assert result.stderr == ""


def test_bench_profile_defaults_to_the_librarys_table_entries() -> None:
    """It profiles what a worker gets from Client() unless told otherwise."""
    from servertracker.batch_encoder import DEFAULT_TABLE_ENTRIES

    result = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    text = " ".join(result.stdout.split())
    assert f"(default: the library's, {DEFAULT_TABLE_ENTRIES}: columns messages;" in text
    assert "library as it comes (``Client()``'s default, no value tables" in text
