"""Wall time of ``trackerctl status`` against a live daemon, as an admin runs it.

Run: ``python -m bench.cli_startup``. Goal: under 150 ms on the 2-core machine.

The commands run alternately, round after round, so that a busy moment on a
shared machine hurts them all alike. Two floors put the numbers in context: the
bare interpreter, and the interpreter importing typer, which trackerctl cannot
start without.
"""

from __future__ import annotations

import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._support import BenchDaemon, arguments, table

ROUNDS = 31
PROJECT = Path(__file__).resolve().parent.parent


def compile_bytecode() -> None:
    """Write .pyc files for the project, as installing a wheel does.

    An editable install run with PYTHONDONTWRITEBYTECODE set (as on these
    machines) would otherwise recompile every module on every start, and the
    benchmark would time the compiler, not trackerctl.
    """
    for package in ("client", "trackerd"):
        compileall.compile_dir(PROJECT / package, quiet=1)


def time_once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000


def time_alternately(
    commands: dict[str, list[str]], rounds: int = ROUNDS
) -> dict[str, list[float]]:
    for command in commands.values():
        subprocess.run(command, capture_output=True, check=False)  # warm the page cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            times[name].append(time_once(command))
    return times


def run() -> dict[str, dict[str, float]]:
    compile_bytecode()
    daemon = BenchDaemon().start()
    try:
        script = str(Path(sys.executable).parent / "trackerctl")
        commands = {
            "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
            "python -c 'import typer' (typer floor)": [sys.executable, "-c", "import typer"],
            "trackerctl status": [script, "status", "--socket", str(daemon.socket_path)],
            "trackerctl status --json": [
                script,
                "status",
                "--json",
                "--socket",
                str(daemon.socket_path),
            ],
        }
        return {
            name: {"median_ms": statistics.median(times), "max_ms": max(times)}
            for name, times in time_alternately(commands).items()
        }
    finally:
        daemon.stop()


def report(results: dict[str, dict[str, float]]) -> str:
    rows = [[name, f"{r['median_ms']:.0f}", f"{r['max_ms']:.0f}"] for name, r in results.items()]
    return table(["command, wall time", "median ms", "max ms"], rows)


if __name__ == "__main__":
    arguments("bench.cli_startup", __doc__).parse_args()
    print(report(run()))
