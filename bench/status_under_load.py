"""Status query latency while 1,000 client connections and 8 busy workers feed trackerd.

Run: ``python -m bench.status_under_load``. One connection asks for the status
every 10 ms from the start of the load until every record is confirmed.
"""

from __future__ import annotations

import os
import resource
import threading
import time

from bench._support import BenchDaemon, arguments, summary, table
from servertracker import Client
from servertracker.connection import DaemonConnection

CONNECTIONS = 1000
WORKERS = 8
PER_WORKER = 100_000


def run() -> dict[str, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    daemon = BenchDaemon().start()
    latencies: list[float] = []
    done = threading.Event()

    def query() -> None:
        with DaemonConnection(daemon.socket_path, timeout=30) as conn:
            while not done.is_set():
                start = time.perf_counter()
                conn.status()
                latencies.append((time.perf_counter() - start) * 1000)
                time.sleep(0.01)

    held = []
    try:
        for n in range(CONNECTIONS):
            conn = DaemonConnection(daemon.socket_path, timeout=30)
            conn.record([(f"172.16.{n // 256}.{n % 256}", f"c@conn{n}.example")])
            held.append(conn)
        querier = threading.Thread(target=query)
        querier.start()
        pids = []
        for w in range(WORKERS):
            pid = os.fork()
            if pid == 0:
                client = Client(daemon.socket_path, max_buffered=PER_WORKER + 1)
                for i in range(PER_WORKER):
                    r = w * PER_WORKER + i
                    client.record_server(
                        f"10.{r // 65536}.{r // 256 % 256}.{r % 256}", f"u{r}@d{r % 9000}.example"
                    )
                os._exit(0 if client.flush(300) else 1)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        total = CONNECTIONS + WORKERS * PER_WORKER
        while daemon.status().records < total:
            time.sleep(0.01)
        done.set()
        querier.join()
    finally:
        done.set()
        for conn in held:
            conn.close()
        daemon.stop()
    result = summary(latencies)
    result["queries"] = len(latencies)
    return result


def report(result: dict[str, float]) -> str:
    return table(
        ["status query under load, ms", "queries", "median", "p99", "max"],
        [["1000 connections + 8 busy workers", int(result["queries"]), f"{result['median']:.2f}",
          f"{result['p99']:.2f}", f"{result['max']:.2f}"]],
    )  # fmt: skip


if __name__ == "__main__":
    arguments("bench.status_under_load", __doc__).parse_args()
    print(report(run()))
