"""Load: a thousand connections and eight busy workers; nothing lost, status always answered."""

from __future__ import annotations

import multiprocessing
import resource
import threading
import time

from servertracker import Client
from servertracker.connection import DaemonConnection
from tests.conftest import Daemon, wait_for

CONNECTIONS = 1000
WORKERS = 8
PER_WORKER = 20_000


def busy_worker(socket_path: str, worker: int) -> None:
    client = Client(socket_path, max_buffered=PER_WORKER + 1)
    for i in range(PER_WORKER):
        r = worker * PER_WORKER + i
        client.record_server(f"10.{r // 65536}.{r // 256 % 256}.{r % 256}", f"u@w{worker}.example")
    assert client.flush(120) and client.stats().dropped == 0


def test_thousand_connections_and_eight_busy_workers(daemon: Daemon) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    latencies: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def query_status_throughout() -> None:
        # A generous timeout: status must be answered, how fast is the benchmark's concern.
        with DaemonConnection(daemon.socket_path, timeout=60) as conn:
            while not done.is_set():
                start = time.perf_counter()
                try:
                    conn.status()
                except Exception as exc:
                    failures.append(repr(exc))
                    return
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)

    querier = threading.Thread(target=query_status_throughout)
    querier.start()
    held = []
    try:
        for n in range(CONNECTIONS):
            conn = DaemonConnection(daemon.socket_path, timeout=30)
            held.append(conn)
            conn.record([(f"172.16.{n // 256}.{n % 256}", f"c@conn{n}.example")])
        context = multiprocessing.get_context("fork")
        workers = [
            context.Process(target=busy_worker, args=(str(daemon.socket_path), w))
            for w in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        # Status is answered once the workers are at it (how often: the machine's speed).
        answered = len(latencies)
        wait_for(lambda: len(latencies) >= answered + 3 or failures, 120, "status answers")
        for conn in held:
            conn.record([(f"172.17.0.{len(held) % 200}", None)])
        for worker in workers:
            worker.join(180)
            assert worker.exitcode == 0
        for conn in held:
            conn.ping()  # every connection still served
    finally:
        done.set()
        querier.join()
        for conn in held:
            conn.close()
    assert failures == []
    # connection IPs: 1000 + 1 from the held connections, 160,000 from the workers;
    # domains: 1000 + 8. records: 2 per connection, 20,000 per worker.
    expected_records = 2 * CONNECTIONS + WORKERS * PER_WORKER
    status = wait_for(
        lambda: (s := daemon.status()).records == expected_records and s, 60, "all records"
    )
    expected = (CONNECTIONS + 1 + WORKERS * PER_WORKER, CONNECTIONS + WORKERS)
    assert (status.unique_conn_ips, status.unique_domains) == expected
