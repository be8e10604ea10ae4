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


#: A bad value of every numeric option of the bench modules (bench._support's
#: whole_number and real_number): refused by the parser, before anything runs.
BAD_VALUES = [
    ("bench.record_cost", "--calls", "0"),
    ("bench.record_cost", "--rounds", "0"),
    ("bench.record_cost", "--attribute-us", "-5"),
    ("bench.record_cost", "--slow-us", "nan"),
    ("bench.compare", "--rounds", "0"),
    ("bench.compare", "--per-worker", "0"),
    ("bench.compare", "--seed-records", "-1"),
    ("bench.costly_names", "--variants", "0"),
    ("bench.costly_names", "--seconds", "-1"),
    ("bench.first_sightings", "--values", "0"),
    ("bench.first_sightings", "--rounds", "0"),
    ("bench.flusher_cost", "--rounds", "0"),
    ("bench.flusher_cost", "--records", "0"),
    ("bench.flusher_cost", "--batch", "0"),
    ("bench.go_original", "--per-worker", "0"),
    ("bench.interned_cost", "--rounds", "0"),
    ("bench.interned_cost", "--per-worker", "0"),
    ("bench.interned_cost", "--batch", "0"),
    ("bench.policy_cost", "--clients", "0"),
    ("bench.policy_cost", "--requests", "0"),
    ("bench.policy_cost", "--rounds", "0"),
    ("bench.policy_cost", "--gap", "-1"),
    ("bench.profile", "--table-entries", "-1"),
    ("bench.worker_cost", "--rounds", "0"),
    ("bench.worker_cost", "--records", "x"),
]


@pytest.mark.parametrize(("module", "option", "value"), BAD_VALUES)
def test_a_bad_number_is_refused_with_a_usage_error(module: str, option: str, value: str) -> None:
    # --calls 0 was a StatisticsError traceback, --rounds 0 an IndexError, and
    # --attribute-us -5 was taken (rev-op, finding 8).
    result = subprocess.run(
        [sys.executable, "-m", module, f"{option}={value}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"argument {option}: " in result.stderr
    assert "Traceback" not in result.stderr
