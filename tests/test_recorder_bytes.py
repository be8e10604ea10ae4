"""The worker's queue is bounded in bytes, not only in records (issue 12 §11)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from servertracker import protocol
from servertracker.recorder import Client

MiB = 1024 * 1024


def test_huge_senders_with_the_daemon_down_keep_the_worker_small(short_tmp: Path) -> None:
    client = Client(short_tmp / "nobody-listens.sock")
    big = "x" * MiB
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(400):
            sender = f"u{i}@" + big  # a fresh 1 MiB string each time
            client.record_server("192.0.2.1", sender)
            del sender
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        client.close(0)
    assert client.stats().recorded == 400  # every one queued, none dropped ...
    assert held < 2 * MiB  # ... each cut to what the daemon can still tell apart
    queued = list(zip(*client._queue.snapshot(), strict=True))
    assert all(len(sender) == protocol.MAX_VALUE_LENGTH + 1 for _, sender in queued)


def test_long_values_past_their_budget_are_dropped_and_counted(short_tmp: Path) -> None:
    client = Client(short_tmp / "nobody-listens.sock", max_long_chars=100_000)
    for i in range(1000):
        client.record_server("192.0.2.1", f"{i}@" + "d" * 400)  # 400-odd characters each
    for i in range(1000):
        client.record_server("192.0.2.1", f"u{i}@short.example")  # short: not limited
    stats = client.stats()
    client.close(0)
    long_values = [s for s in client._queue.snapshot()[1] if s and len(s) > 64]
    assert sum(map(len, long_values)) <= 100_000
    assert len(long_values) > 200  # the budget was used, not refused outright
    assert stats.dropped == 1000 - len(long_values)
    assert stats.recorded == 2000 - stats.dropped
