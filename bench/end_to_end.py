"""End-to-end throughput: 8 forked workers record through the servertracker client
until trackerd's status confirms every record. Run: ``python -m bench.end_to_end``.
"""

from __future__ import annotations

import os
import time

from bench._support import BenchDaemon, arguments, table
from servertracker import Client

WORKERS = 8
PER_WORKER = 50_000


def workload(worker: int, count: int) -> list[tuple[str, str]]:
    pairs = []
    for i in range(count):
        r = worker * count + i
        ip = f"10.{r // 65536 % 256}.{r // 256 % 256}.{r % 256}"
        sender = f"u{r}@[192.0.2.{r % 200}]" if r % 20 == 0 else f"user{r}@d{r % 4500}.example"
        pairs.append((ip, sender))
    return pairs


def run_trackerd(workers: int = WORKERS, per_worker: int = PER_WORKER) -> float:
    """Seconds from the first fork until the status shows every record."""
    daemon = BenchDaemon().start()
    try:
        loads = [workload(w, per_worker) for w in range(workers)]  # made before timing
        start = time.perf_counter()
        pids = []
        for w in range(workers):
            pid = os.fork()
            if pid == 0:
                client = Client(daemon.socket_path, max_buffered=per_worker + 1)
                for ip, sender in loads[w]:
                    client.record_server(ip, sender)
                ok = client.flush(300)
                os._exit(0 if ok and client.stats().dropped == 0 else 1)
            pids.append(pid)
        for pid in pids:
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "a worker lost records"
        total = workers * per_worker
        while daemon.status().records < total:
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        daemon.stop()


def report(total: int, seconds: float) -> str:
    return table(
        ["end to end, 8 forked workers", "records", "seconds", "records/s"],
        [["trackerd via servertracker", total, f"{seconds:.2f}", f"{total / seconds:,.0f}"]],
    )


if __name__ == "__main__":
    arguments("bench.end_to_end", __doc__).parse_args()
    elapsed = run_trackerd()
    print(report(WORKERS * PER_WORKER, elapsed))
