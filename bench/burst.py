"""What a burst loses: ``python -m bench.burst``.

One process records 200,000 pairs in a tight loop (a script importing a log)
with the default client, daemon up and idle: record_server() drops what does not
fit in the queue (100,000 by default) while the background thread sends;
record_many() waits for room and drops nothing. Alternated, 3 rounds.
"""

from __future__ import annotations

import statistics
import time

from bench._support import BenchDaemon, arguments, table
from servertracker import Client

RECORDS = 200_000


def one(daemon: BenchDaemon, many: bool) -> tuple[int, float]:
    pairs = [(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"<u@d{i % 4500}.example>")
             for i in range(RECORDS)]  # fmt: skip
    client = Client(daemon.socket_path)
    start = time.perf_counter()
    if many:
        client.record_many(pairs)
    else:
        record = client.record_server
        for conn_ip, sender in pairs:
            record(conn_ip, sender)
    client.flush(600)
    elapsed = time.perf_counter() - start
    dropped = client.stats().dropped
    client.close()
    return dropped, elapsed


def main() -> None:
    arguments("bench.burst", __doc__).parse_args()
    daemon = BenchDaemon().start()
    results: dict[str, list[tuple[int, float]]] = {"record_server": [], "record_many": []}
    try:
        for _ in range(3):
            for name in results:
                results[name].append(one(daemon, name == "record_many"))
    finally:
        daemon.stop()
    rows = [
        [name, " / ".join(f"{d:,}" for d, _ in runs),
         f"{statistics.median(d for d, _ in runs) / RECORDS:.0%}",
         f"{statistics.median(s for _, s in runs):.2f}"]
        for name, runs in results.items()
    ]  # fmt: skip
    print(table([f"{RECORDS:,} in a tight loop", "dropped (rounds)", "median lost",
                 "median s to flushed"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
