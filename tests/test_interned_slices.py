"""How the daemon defines an interned message's new values in slices, and what one
connection may take of the tables' budget (issue 13 review of `interned`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker import Client, batch_encoder, protocol
from servertracker.batch_encoder import SMTP_TABLE_ENTRIES
from servertracker.flusher import C_COLUMNS_BATCH_SIZE, DEFAULT_BATCH_SIZE
from tests.conftest import Daemon, wait_for
from tests.test_interned_daemon import NIL, Peer, refs
from trackerd.core.value_table import DEFAULT_MAX_INTERNED_ENTRIES
from trackerd.edges.msgpack_server import FIRST_SLICE, GRANT_SHARE, MAX_SLICE, MIN_SLICE

#: Wraps Tracker.define_into in the daemon: one line per call, what it was handed
#: and what it did.
_LOGGING_PRELUDE = """
import json
from trackerd.core.tracker import Tracker
_define_into = Tracker.define_into
def define_into(self, tables, column, first, values, deadline=None):
    done = _define_into(self, tables, column, first, values, deadline)
    with open({path!r}, "a") as log:
        log.write(json.dumps([column, first, len(values), done]) + "\\n")
    return done
Tracker.define_into = define_into
"""


def test_definitions_are_handed_to_slices_as_columns_pairs_are(
    short_tmp: Path, make_daemon: Callable[..., Daemon]
) -> None:
    """A slice is handed no more values than the rule of _record allows: the first
    FIRST_SLICE, then at most twice what the one before did; each starts where the
    one before stopped. (Handed 16,384 values each, a slice paid for hashing and
    looking up all of them to define a few hundred: 3x the CPU of `columns`.)"""
    calls_log = short_tmp / "define_into.log"
    daemon = make_daemon(python_prelude=_LOGGING_PRELUDE.format(path=str(calls_log))).start()
    count = 30_000
    senders = [f"d{i}.slices.example" for i in range(count)]
    with Peer(daemon) as peer:
        assert peer.intern(count) == count
        peer.send(protocol.RecordInterned(0, [], refs([NIL] * count),
                                          0, senders, refs(range(count))))  # fmt: skip
        assert peer.ask(protocol.Ping()) == protocol.Pong()
    status = daemon.status()
    assert (status.records, status.unique_domains) == (count, count)
    calls = [json.loads(line) for line in calls_log.read_text().splitlines()]
    assert {column for column, *_ in calls} == {1}  # the sender column only
    assert calls[0][1:3] == [0, FIRST_SLICE]
    at = 0
    for number, (_column, first, handed, done) in enumerate(calls):
        assert first == at, "a slice did not start where the one before stopped"
        assert 1 <= done <= handed <= MAX_SLICE
        if number:
            _, _, last_handed, last_done = calls[number - 1]
            bound = 2 * last_handed if last_done == last_handed else max(MIN_SLICE, 2 * last_done)
            assert handed <= min(bound, count - first), (number, calls[number - 1], calls[number])
        at += done
    assert at == count


def test_a_few_connections_cannot_take_the_whole_budget(daemon: Daemon) -> None:
    """At the default budget, connections asking for the most (2^20 ids) are granted
    1/GRANT_SHARE of it each: GRANT_SHARE of them take it all, not four."""
    cap = DEFAULT_MAX_INTERNED_ENTRIES // (2 * GRANT_SHARE)
    assert cap < protocol.MAX_INTERN_ENTRIES
    peers = [Peer(daemon) for _ in range(GRANT_SHARE + 1)]
    try:
        grants = [peer.intern(protocol.MAX_INTERN_ENTRIES) for peer in peers]
        assert grants == [cap] * GRANT_SHARE + [0]
    finally:
        for peer in peers:
            peer.close()


@pytest.mark.parametrize("case", ["declined", "none left"])
def test_a_worker_granted_less_than_it_asked_asks_again_and_loses_nothing(
    make_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Peers hold the budget: all but 2,000 entries of it, so that a worker asking
    for its default tables is granted 1,000 ids and declines them, or all of it, so
    that one asking for 500 is granted none. Either sends columns. Once the peers
    close, its next batch goes on a new connection that asks again and gets tables;
    every record counts once."""
    budget = 262_144  # at most 8,192 ids a connection
    cap = budget // (2 * GRANT_SHARE)
    left = 1000 if case == "declined" else 0
    daemon = make_daemon(extra_args=["--max-interned-entries", str(budget)]).start()
    peers = [Peer(daemon) for _ in range(GRANT_SHARE)]
    grants = [peer.intern(cap) for peer in peers[:-1]]
    grants.append(peers[-1].intern(cap - left))
    assert grants == [cap] * (GRANT_SHARE - 1) + [cap - left]
    pairs = [(f"10.3.0.{i % 40}", f"<u@d{i % 30}.example>") for i in range(2000)]
    asked = SMTP_TABLE_ENTRIES if case == "declined" else 500
    client = Client(daemon.socket_path, batch_size=50, table_entries=asked)
    try:
        assert client.record_many(pairs[:1000]) == 1000
        assert client.flush(30)
        assert (client.stats().message, client.stats().table_entries) == ("columns", 0)
        for peer in peers:
            peer.close()

        def budget_back() -> bool:
            with Peer(daemon) as probe:
                return probe.intern(cap) == cap

        wait_for(budget_back, 30, "the peers' entries to return")
        monkeypatch.setattr(batch_encoder, "ASK_AGAIN", 0.0)
        assert client.record_many(pairs[1000:]) == 1000
        assert client.flush(30)
        granted = min(asked, cap)
        assert (client.stats().message, client.stats().table_entries) == ("interned", granted)
        status = wait_for(lambda: (s := daemon.status()).records >= 2000 and s, 30, "records")
        assert (status.records, status.unique_conn_ips, status.unique_domains) == (2000, 40, 30)
        assert client.stats().dropped == 0
    finally:
        client.close()


def test_a_client_librarys_whole_batch_fits_in_a_first_slice() -> None:
    # An honest worker's columns frame is counted in one call (msgpack_server's
    # FIRST_SLICE comment): the daemon's first slice follows the library's batches.
    assert max(DEFAULT_BATCH_SIZE, C_COLUMNS_BATCH_SIZE) <= FIRST_SLICE
