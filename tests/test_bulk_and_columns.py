"""record_many() (bulk recording that loses nothing) and the columns extension,
against a real trackerd and against a daemon that speaks version 1 without it."""

from __future__ import annotations

import gc
import socket
import threading
import time
from pathlib import Path

import pytest

from servertracker import Client, protocol
from tests.conftest import Daemon, wait_for


def test_record_many_loses_nothing_where_record_server_drops(daemon: Daemon) -> None:
    """A queue of 50 and 20,000 pairs: record_many() waits for room, so all count."""
    pairs = [(f"10.0.{i // 256 % 256}.{i % 256}", f"<u@d{i % 300}.example>") for i in range(20_000)]
    client = Client(daemon.socket_path, max_buffered=50, batch_size=20)
    assert client.record_many(iter(pairs)) == len(pairs)
    assert client.flush(30)
    stats = client.stats()
    assert (stats.recorded, stats.sent, stats.dropped) == (20_000, 20_000, 0)
    status = wait_for(lambda: (s := daemon.status()).records == 20_000 and s, 20, "all records")
    assert (status.unique_conn_ips, status.unique_domains) == (20_000, 300)
    client.close()


def test_record_many_gives_up_at_its_timeout_and_says_how_many(short_tmp: Path) -> None:
    client = Client(short_tmp / "nobody-home.sock", max_buffered=100)
    started = time.monotonic()
    queued = client.record_many([("192.0.2.1", "a@b.example")] * 1000, timeout=0.3)
    assert queued == 100  # the queue's bound; the rest was not taken
    assert time.monotonic() - started >= 0.3
    stats = client.stats()
    assert (stats.recorded, stats.dropped) == (100, 0)
    client.close(timeout=0.1)


def test_record_many_takes_values_as_record_server_does(daemon: Daemon) -> None:
    client = Client(daemon.socket_path)
    assert client.record_many([[b"192.0.2.7", None], ("192.0.2.8", "x@[192.0.2.9]")]) == 2
    with pytest.raises(ValueError):
        client.record_many([("192.0.2.1",)])
    assert client.flush(10)
    status = wait_for(lambda: (s := daemon.status()).records == 2 and s, 10, "two records")
    assert (status.unique_conn_ips, status.unique_ip_servers) == (2, 1)
    client.close()


def test_a_current_daemon_gets_columns_from_a_client_without_tables(daemon: Daemon) -> None:
    client = Client(daemon.socket_path, table_entries=0)
    client.record_server("192.0.2.1", "<a@b.example>")
    assert client.flush(10)
    assert client.stats().message == "columns"  # negotiated on connecting
    wait_for(lambda: daemon.status().records == 1, 10, "the record")
    client.close()


class OlderDaemon:
    """Speaks version 1 as trackerd did before "features": an unknown type gets an
    error and the connection is closed; record messages are collected."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.pairs: list[tuple[str | None, str | None]] = []
        self.refused = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                decoder = protocol.MessageDecoder()
                while data := conn.recv(65536):
                    decoder.receive_data(data)
                    message = decoder.next_message()
                    while message is not protocol.NEED_DATA:
                        if not isinstance(message, protocol.Record):
                            self.refused += 1
                            error = protocol.Error(protocol.ERR_UNKNOWN_TYPE, "unknown type")
                            conn.sendall(protocol.encode(error))
                            break
                        self.pairs += [(a, b) for a, b in message.pairs]
                        message = decoder.next_message()
                    else:
                        continue
                    break


def test_an_older_daemon_gets_pairs_and_loses_nothing(short_tmp: Path) -> None:
    older = OlderDaemon(short_tmp / "old.sock")
    pairs = [(f"192.0.2.{i % 250}", f"u{i}@example.com") for i in range(1500)]
    client = Client(short_tmp / "old.sock")
    for conn_ip, sender in pairs:
        client.record_server(conn_ip, sender)
    assert client.flush(10)
    assert older.refused == 1 and client.stats().message == "record"
    wait_for(lambda: len(older.pairs) == len(pairs), 10, "every pair")
    assert older.pairs == pairs
    client.close()
    older.listener.close()


def test_record_server_makes_no_object_the_garbage_collector_tracks(short_tmp: Path) -> None:
    """So recording never sets off a collection, which stalls the caller (a full
    collection took milliseconds: docs/performance-history.md)."""
    client = Client(short_tmp / "nobody-home.sock")
    client._start = lambda: None  # type: ignore[method-assign]  # no flusher allocating meanwhile
    conn_ips = [f"192.0.2.{i % 250}" for i in range(1000)]
    record = client.record_server
    record("192.0.2.1", "warm@up.example")
    gc.disable()
    try:
        before = gc.get_count()[0]
        for conn_ip in conn_ips:
            record(conn_ip, "user@example.com")
        after = gc.get_count()[0]
    finally:
        gc.enable()
    assert client.stats().recorded == 1001
    # A tuple per record would be 1,000; the margin is for other threads of this
    # process (an earlier test's client retrying a connection) allocating meanwhile.
    assert after - before < 200


def test_flush_waits_for_the_batch_being_encoded(daemon: Daemon) -> None:
    """flush() returned True while the flusher held the last batch, taken from the
    queue but not yet encoded: a process that then exited lost it."""
    client = Client(daemon.socket_path)
    client.record_server("192.0.2.1", "warm@up.example")
    assert client.flush(10)
    encode = client._encode_batch

    def slow_encode() -> None:
        time.sleep(0.3)  # widens the window in which the batch is in no queue
        encode()

    client._encode_batch = slow_encode  # type: ignore[method-assign]
    client.record_server("192.0.2.2", "last@batch.example")
    assert client.flush(10)
    assert client.stats().sent == 2
    client.close()
