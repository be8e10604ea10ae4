"""The worker library's "interned" messages against real daemons: the same counts as
"columns" for the same records, with ids reused, across a daemon restart and a fork,
and the fallbacks (a fixed hash seed, a daemon that grants nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from servertracker import Client, batch_encoder, protocol
from servertracker.batch_encoder import SMTP_TABLE_ENTRIES, BatchEncoder
from servertracker.status import Status
from tests.conftest import Daemon, wait_for
from tests.test_interned_daemon import Peer
from tests.test_sender_split import FORMS

Pair = tuple[str | None, str | None]

ODD_CONN_IPS = [None, "", " ", "192.0.2.1", "[192.0.2.1]", " 192.0.2.1 ", "::ffff:192.0.2.1",
                "2001:DB8::1", "fe80::1%eth0", "bogus", "1.2.3", "ü", "x" * 600]  # fmt: skip


def workload(repeats: int = 3) -> list[Pair]:
    """Every sender form of the sender tests (rejected, ignored and odd ones too),
    each several times, beside connection IPs of every kind."""
    senders: list[str | None] = [*FORMS, None]
    pairs: list[Pair] = []
    for round_ in range(repeats):
        for index, sender in enumerate(senders):
            conn_ip = ODD_CONN_IPS[(index + round_) % len(ODD_CONN_IPS)]
            pairs.append((conn_ip, sender))
            pairs.append((f"10.{round_}.{index // 256 % 256}.{index % 256}", sender))
    return pairs


def fields(status: Status) -> tuple[int, ...]:
    return (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers,
            status.records, status.rejected_conn_ips, status.rejected_senders)  # fmt: skip


def counts_after(daemon: Daemon, records: int) -> tuple[int, ...]:
    status = wait_for(lambda: (s := daemon.status()).records >= records and s, 60, "records")
    return fields(status)


def protocol_errors(daemon: Daemon) -> int:
    health = daemon.status().health
    assert health is not None
    return sum(health.protocol_errors.values())


def interned_messages(daemon: Daemon) -> int:
    health = daemon.status().health
    assert health is not None
    return health.interned_messages


def send(daemon: Daemon, pairs: Sequence[Pair], **options: int) -> Client:
    """A client that asks for tables (SMTP_TABLE_ENTRIES) unless told otherwise:
    the default, columns, is asked for with table_entries=0."""
    options.setdefault("table_entries", SMTP_TABLE_ENTRIES)
    client = Client(daemon.socket_path, **options)  # type: ignore[arg-type]
    assert client.record_many(pairs) == len(pairs)
    assert client.flush(30)
    return client


def test_interned_counts_as_columns_on_every_sender_form(
    make_daemon: Callable[..., Daemon],
) -> None:
    pairs = workload()
    interned_daemon, columns_daemon = make_daemon("i").start(), make_daemon("c").start()
    interned = send(interned_daemon, pairs, batch_size=97)
    columns = send(columns_daemon, pairs, batch_size=97, table_entries=0)
    assert interned.stats().message == "interned" and interned.stats().table_entries > 0
    assert columns.stats().message == "columns"
    expected = counts_after(columns_daemon, len(pairs))
    assert expected[3] == len(pairs) and expected[4] > 0 and expected[5] > 0
    assert counts_after(interned_daemon, len(pairs)) == expected
    interned.close()
    columns.close()


def test_ids_reused_first_in_first_out_still_count_exactly(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A table of 50 ids for hundreds of values: ids are redefined batch after batch,
    messages are cut before a redefinition, and nothing counts as another value."""
    pairs: list[Pair] = [
        (f"10.9.{i * 7 % 400 // 256}.{i * 7 % 400 % 256}", f"<u{i}@d{i * 11 % 300}.example>")
        for i in range(3000)
    ]
    pairs += workload(1)
    interned_daemon, columns_daemon = make_daemon("i").start(), make_daemon("c").start()
    interned = send(interned_daemon, pairs, batch_size=64, table_entries=50)
    columns = send(columns_daemon, pairs, batch_size=64, table_entries=0)
    assert (interned.stats().message, interned.stats().table_entries) == ("interned", 50)
    expected = counts_after(columns_daemon, len(pairs))
    assert counts_after(interned_daemon, len(pairs)) == expected
    assert protocol_errors(interned_daemon) == 0
    interned.close()
    columns.close()


def test_a_restart_mid_stream_loses_nothing_record_many_queued(
    make_daemon: Callable[..., Daemon],
) -> None:
    """The daemon is stopped with frames queued in its socket and killed: what the
    client wrote whole went with it; every other record, the batch written in part
    included, goes to the next daemon, encoded afresh for its new tables."""
    daemon = make_daemon().start()
    assert daemon.process is not None
    client = Client(
        daemon.socket_path, batch_size=256, max_buffered=200_000, table_entries=SMTP_TABLE_ENTRIES
    )
    first = [(f"10.1.{i // 256 % 256}.{i % 256}", f"u@d{i % 500}.example") for i in range(2000)]
    assert client.record_many(first) == len(first)
    assert client.flush(30)
    assert client.stats().message == "interned"
    os.kill(daemon.process.pid, signal.SIGSTOP)
    # Enough to fill the socket's buffers: a write taken in part, and more queued.
    later = [(f"10.2.{i // 256 % 256}.{i % 256}", f"<v@e{i % 700}.example>") for i in range(60_000)]
    assert client.record_many(later) == len(later)
    wait_for(lambda: client.stats().sent > len(first), 30, "a batch written whole")
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait(10)
    wait_for(lambda: not client.stats().connected, 30, "the client to notice")
    lost_with_it = client.stats().sent  # written whole to the killed daemon
    daemon.start()  # a new daemon: new salt, new tables, counts from zero
    assert client.flush(60)
    stats = client.stats()
    assert (stats.sent, stats.dropped, stats.message) == (len(first) + len(later), 0, "interned")
    expected = len(first) + len(later) - lost_with_it
    status = wait_for(lambda: (s := daemon.status()).records >= expected and s, 60, "records")
    assert status.records == expected  # nothing lost, nothing twice
    assert protocol_errors(daemon) == 0
    client.close()


def test_forked_workers_number_their_own_values(daemon: Daemon) -> None:
    client = Client(
        daemon.socket_path, flush_interval=30, batch_size=10_000, table_entries=SMTP_TABLE_ENTRIES
    )
    client.record_many([("192.0.2.1", "a@before.example"), ("192.0.2.2", "<b@before.example>")])
    assert client.flush(10)
    client.record_server("192.0.2.3", "queued@at-fork.example")  # queued when we fork
    children = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:  # child: its own connection and tables, the parent's ids unknown
            code = 1
            try:
                pairs = [("192.0.2.1", "a@before.example"), (f"198.51.100.{n}", f"c@c{n}.example")]
                client.record_many(pairs * 50)
                ok = client.flush(10) and client.stats().message == "interned"
                code = 0 if ok and client.stats().sent == 100 else 2
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    client.record_server("192.0.2.4", "<a@before.example>")
    assert client.flush(10)
    # IPs: 192.0.2.1-4 and four children's; domains: before, at-fork, c0-c3.
    assert counts_after(daemon, 4 + 400) == (8, 6, 0, 404, 0, 0)
    client.close()


WORKER = textwrap.dedent(
    """
    import sys
    from servertracker import Client
    client = Client(sys.argv[1], table_entries=16384)  # asks for tables
    client.record_many([("192.0.2.1", "u@a.example"), ("192.0.2.2", "<v@a.example>")] * 10)
    assert client.flush(10)
    print(client.stats().message)
    """
)


def test_a_fixed_hash_seed_sends_columns(daemon: Daemon) -> None:
    """hash() is not secret with PYTHONHASHSEED set: the worker keys no table by it."""

    def worker(seed: str) -> str:
        env = dict(os.environ, PYTHONHASHSEED=seed)
        result = subprocess.run(
            [sys.executable, "-c", WORKER, str(daemon.socket_path)],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout.strip()

    assert worker("0") == "columns"
    assert counts_after(daemon, 20) == (2, 1, 0, 20, 0, 0)
    assert interned_messages(daemon) == 0  # the daemon's own count agrees
    assert worker("random") == "interned"
    assert counts_after(daemon, 40) == (2, 1, 0, 40, 0, 0)
    assert interned_messages(daemon) > 0


def test_a_daemon_with_tables_off_gets_columns_on_one_connection_and_counts(
    make_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-interned-entries 0: the features reply omits "interned" (an intern
    request still gets 0), so a worker never asks again for tables it would never
    be granted: no reconnect, however many batches, and exact counts. This is also
    how an older daemon answers (columns but not interned): the worker sends columns."""
    monkeypatch.setattr(batch_encoder, "ASK_AGAIN", 0.0)  # were it granted 0: every batch
    daemon = make_daemon(extra_args=["--max-interned-entries", "0"]).start()
    with daemon.connect() as conn:
        assert conn.features() == (protocol.FEATURE_COLUMNS,)
    with Peer(daemon) as peer:
        assert peer.intern(10) == 0
    pairs = workload(2)
    assert len(pairs) > 5 * 20  # several batches
    client = send(daemon, pairs, batch_size=20)
    assert (client.stats().message, client.stats().table_entries) == ("columns", 0)
    assert client.stats().reconnects == 0
    assert interned_messages(daemon) == 0
    reference = make_daemon("c").start()
    columns = send(reference, pairs, table_entries=0)
    assert counts_after(daemon, len(pairs)) == counts_after(reference, len(pairs))
    client.close()
    columns.close()


def test_a_failed_write_keeps_the_records_of_the_frames_not_written_whole(
    short_tmp: Path,
) -> None:
    """The frames written whole were sent; the rest of the batch waits for the next
    connection, whose tables start empty (so it is encoded again, from its values)."""
    client = Client(short_tmp / "nobody-home.sock")
    client._encoder = BatchEncoder("interned", 8)  # 8 ids: a batch of many frames
    pairs = [(f"192.0.2.{i}", f"u@d{i}.example") for i in range(40)]
    client._batch = ([ip for ip, _ in pairs], [sender for _, sender in pairs])
    client._out_count = len(pairs)
    client._encode_batch()
    assert len(client._out_ends) > 2
    (first_bytes, first_records), (second_bytes, _) = client._out_ends[:2]
    client._written = first_bytes + (second_bytes - first_bytes) // 2  # the second in part
    client._keep_unwritten()
    assert client.stats().sent == first_records
    assert list(zip(*client._batch, strict=True)) == pairs[first_records:]
    assert client._out_count == len(pairs) - first_records and client._out == b""


def test_tables_started_afresh_still_count_exactly(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection's tables start afresh every TABLE_LIFETIME (fleet epochs): ids
    are then defined again, and nothing counts twice or as another value."""
    monkeypatch.setattr(batch_encoder, "TABLE_LIFETIME", 0.0)  # afresh at every batch
    pairs = [(f"10.3.0.{i % 40}", f"<u@d{i % 30}.example>") for i in range(2000)]
    client = send(daemon, pairs, batch_size=50)
    assert client.stats().message == "interned"
    assert counts_after(daemon, len(pairs)) == (40, 30, 0, 2000, 0, 0)
    assert protocol_errors(daemon) == 0
    client.close()


def test_a_grant_too_small_to_be_worth_it_is_declined(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A daemon whose budget is nearly spent grants a few ids: a table that small
    would redefine ids batch after batch, so the worker sends columns."""
    # At most 1,000 ids a connection (1/16 of the budget, two tables each).
    daemon = make_daemon(extra_args=["--max-interned-entries", "32000"]).start()
    pairs = workload(1)
    declined = send(daemon, pairs)  # asks 16,384, is granted 1,000
    assert (declined.stats().message, declined.stats().table_entries) == ("columns", 0)
    small = send(daemon, pairs, table_entries=500)  # asked for so few itself: takes them
    assert (small.stats().message, small.stats().table_entries) == ("interned", 500)
    assert counts_after(daemon, 2 * len(pairs))[3] == 2 * len(pairs)
    declined.close()
    small.close()
