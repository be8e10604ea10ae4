"""Wall time of ``trackerctl status`` against a live daemon, as an admin runs it.

Run: ``python -m bench.cli_startup``. Goal: under 150 ms on the 2-core machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._support import BenchDaemon, table

RUNS = 15


def time_command(command: list[str], runs: int = RUNS) -> list[float]:
    subprocess.run(command, capture_output=True, check=False)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def run() -> dict[str, dict[str, float]]:
    daemon = BenchDaemon().start()
    try:
        script = str(Path(sys.executable).parent / "trackerctl")
        commands = {
            "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
            "trackerctl status": [script, "status", "--socket", str(daemon.socket_path)],
            "trackerctl status --json": [
                script,
                "status",
                "--json",
                "--socket",
                str(daemon.socket_path),
            ],
        }
        results = {}
        for name, command in commands.items():
            times = time_command(command)
            results[name] = {"median_ms": statistics.median(times), "max_ms": max(times)}
        return results
    finally:
        daemon.stop()


def report(results: dict[str, dict[str, float]]) -> str:
    rows = [[name, f"{r['median_ms']:.0f}", f"{r['max_ms']:.0f}"] for name, r in results.items()]
    return table(["command, wall time", "median ms", "max ms"], rows)


if __name__ == "__main__":
    print(report(run()))
