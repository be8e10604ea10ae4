"""A long value is cut before it is queued, and the daemon judges the cut form as
it would judge the whole: counted as the same value, rejected, or ignored.

The daemon strips first, then rejects what is over MAX_VALUE_LENGTH; a cut made
before stripping turned "<510 spaces>a@b.com" into "a@b" (another domain). And a
long str given to record_many() went uncut, and wedged an interned flusher.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker import Client
from servertracker.status import Status
from servertracker.value_cut import BYTES_DECODED, SEND_VALUE_LIMIT, clean, cut
from tests.conftest import Daemon, wait_for
from trackerd.core.normalise import classify_conn_ip, classify_sender

#: Whitespace that str.strip() (the daemon's) strips, of several kinds ...
STRIPPED = [" ", "\t", "\u3000", "\x1c", "\x85", "\u00a0", "\u2028", "\n"]
#: ... and characters that look like it but are not stripped.
KEPT = ["\u200b", "\ufeff", "\u180e", "\x00"]


def _values() -> list[str]:
    values = []
    for space in [*STRIPPED, " \t\u3000\x85"]:
        for lead in (0, 1, 506, 510, 600, 5000):
            for body in ("192.0.2.10", "a@b.com", "<u@b.example>"):
                for trail in (0, 3, 700, 5000):
                    values.append(space * lead + body + space * trail)
            # stripped lengths of exactly 512 and 513, and around them
            for length in (511, 512, 513, 514):
                for trail in (0, 2, 5000):
                    values.append(space * lead + "a@" + "d" * (length - 2) + space * trail)
                    values.append(space * lead + "a" + space * (length - 2) + "b" + space * trail)
            values.append(space * (lead + 600))  # whitespace only
            values.append("a" + space * (lead + 600) + "b.example")  # a run inside
    for kept in KEPT:
        for lead in (506, 510, 600):
            values.append(kept * lead + "a@b.com")
            values.append(" " * lead + kept + "a@b.com")
            values.append("a@b.com" + " " * 505 + kept)
    return values


def test_the_cut_form_is_judged_as_the_whole() -> None:
    # One test for some 2,000 values: a parametrized case each doubled the suite's count.
    for value in _values():
        what = f"{len(value)}: {value.strip()[:12]!r}"
        sent = cut(value)
        assert len(sent) <= SEND_VALUE_LIMIT, what
        assert classify_conn_ip(sent) == classify_conn_ip(value), what
        assert classify_sender(sent) == classify_sender(value), what
        assert clean(value) == sent, what  # the mend path and non-str values cut alike


def test_a_short_value_goes_as_it_came() -> None:
    for value in ("  a@b.com ", " " * 400 + "x", "y" * SEND_VALUE_LIMIT):
        assert cut(value) is value


def test_bytes_are_cut_before_decoding_and_judged_as_the_whole() -> None:
    # Multi-byte characters at the cut, leading space within the bound.
    for value in (
        " " * 1000 + "ü" * 5000,
        "\u3000" * 500 + "a@b.example" + "y" * 7000,
        " " * 1000 + "a@b.example" + "\u3000" * 3000,
        "€" * 3000 + "x",
        " " * 1500 + "a@b.example" + "z" * 7000,
        "a@" + "😀" * 3000,
    ):
        data = value.encode()
        assert len(data) > BYTES_DECODED
        sent = clean(data)
        assert sent is not None and "\ufffd" not in sent
        assert classify_sender(sent) == classify_sender(value)
        assert classify_conn_ip(sent) == classify_conn_ip(value)
    # A huge value is not decoded whole (the cost was 51-66 ms for 20 MB).
    huge = bytearray(b"x" * 20_000_000)
    tracemalloc.start()
    try:
        sent = clean(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sent == "x" * SEND_VALUE_LIMIT
    assert peak < 20 * BYTES_DECODED  # the bytearray's 20 MB copy is not made either


def _counts(status: Status) -> tuple[int, int, int, int, int]:
    return (
        status.unique_conn_ips,
        status.unique_domains,
        status.rejected_conn_ips,
        status.rejected_senders,
        status.records,
    )


@pytest.mark.parametrize("table_entries", [16384, 0])
def test_leading_whitespace_counts_as_the_daemon_counts_it(
    make_daemon: Callable[..., Daemon], table_entries: int
) -> None:
    daemon = make_daemon().start()
    client = Client(daemon.socket_path, table_entries=table_entries, flush_interval=0.01)
    client.record_server(" " * 506 + "192.0.2.10", " " * 510 + "a@b.com")
    client.record_server("192.0.2.10", " " * 510 + "a@b.org")
    client.record_server(" " * 600 + "192.0.2.11", "\t" * 600 + "a@lead.example")
    client.record_many([(" " * 5000 + "192.0.2.12", "\u3000" * 5000 + "a@many.example")])
    # A stripped length of 513 is rejected, of 512 counted: each as a whole.
    client.record_server("192.0.2.10", " " * 9 + "x" * 499 + "@ok513.example" + " " * 9)
    client.record_server("192.0.2.10", " " * 9 + "x" * 498 + "@ok512.example" + " " * 9)
    assert client.flush(10)
    status = wait_for(lambda: (s := daemon.status()).records >= 6 and s, what="6 records")
    assert _counts(status) == (3, 5, 0, 1, 6)
    client.close()
    daemon.stop()


@pytest.mark.parametrize("table_entries", [16384, 0])
def test_record_many_cuts_a_long_str_and_every_record_counts(
    make_daemon: Callable[..., Daemon], table_entries: int
) -> None:
    # Uncut, a 200,000-character sender was too long for any interned message,
    # and the flusher looped on it for ever.
    daemon = make_daemon().start()
    client = Client(daemon.socket_path, table_entries=table_entries, flush_interval=0.01)
    assert client.record_many([("192.0.2.1", "a@" + "x" * 200_000)]) == 1
    for i in range(1000):
        client.record_server("192.0.2.2", f"u@later{i}.example")
    assert client.flush(30)
    status = wait_for(lambda: (s := daemon.status()).records >= 1001 and s, what="records")
    assert _counts(status) == (2, 1000, 0, 1, 1001)
    assert client.stats().sent == 1001
    client.close()
    daemon.stop()


def test_record_many_queues_values_cut_as_record_server_does(short_tmp: Path) -> None:
    client = Client(short_tmp / "nobody-listens.sock")
    values = [" " * 600 + "a@b.com", "a@" + "x" * 200_000, 7 * "\u3000" + "y" * 100]
    client.record_many([(value, value) for value in values], timeout=5)
    for value in values:
        client.record_server(value, value)
    client.close(0)
    expected = [cut(value) for value in values] * 2
    assert list(client._queue.snapshot()[0]) == expected
    assert list(client._queue.snapshot()[1]) == expected
