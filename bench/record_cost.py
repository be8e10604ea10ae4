"""What one record_server() call costs an SMTP worker: daemon up, down, and stalled.

Each call is timed alone with perf_counter_ns; the timer's own cost (the median
of empty timings) is subtracted. Run: ``python -m bench.record_cost``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from bench._support import BenchDaemon, summary, table
from servertracker import Client

CALLS = 200_000


def time_calls(client: Client, calls: int = CALLS) -> list[float]:
    """Per-call cost in microseconds."""
    clock = time.perf_counter_ns
    empty = []
    for _ in range(10_000):
        t0 = clock()
        empty.append(clock() - t0)
    overhead = sorted(empty)[len(empty) // 2]
    ips = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(calls)]
    record = client.record_server
    costs = []
    for ip in ips:
        t0 = clock()
        record(ip, "user@example.com")
        costs.append(max(0, clock() - t0 - overhead) / 1000)
    return costs


def run() -> dict[str, dict[str, float]]:
    results = {}
    daemon = BenchDaemon().start()
    try:
        client = Client(daemon.socket_path, max_buffered=1_000_000)
        client.record_server("192.0.2.1", "warm@up.example")
        client.flush()
        results["daemon up"] = summary(time_calls(client))
        client.flush(60)

        daemon.signal(signal.SIGSTOP)
        results["daemon stalled (SIGSTOP)"] = summary(time_calls(client))
        daemon.signal(signal.SIGCONT)
        client.close(5)
    finally:
        daemon.stop()
    down = Client(Path("/tmp/stb-nowhere/trackerd.sock"), max_buffered=100_000)
    results["daemon down (queue fills, then drops)"] = summary(time_calls(down))
    down.close(0.1)
    return results


def report(results: dict[str, dict[str, float]]) -> str:
    rows = [[name, *(f"{v:.2f}" for v in stats.values())] for name, stats in results.items()]
    return table(["record_server() cost, µs", "median", "p99", "p99.9", "max"], rows)


if __name__ == "__main__":
    print(report(run()))
