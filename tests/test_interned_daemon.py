"""The `interned` message against real daemons: counts as `columns`, all or nothing,
the tables' budget, windows and fleet epochs (docs/protocol.md, "interned")."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from servertracker import protocol
from servertracker.status import Status
from tests.conftest import Daemon, wait_for
from tests.test_fleet import assert_both_epochs_hold, keygen, population

NIL = protocol.INTERNED_NIL
Pair = tuple[str | None, str | None]


def refs(ids: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(ids)}I", *ids)


class Peer:
    """A raw protocol connection: frames out, decoded daemon messages in."""

    def __init__(self, daemon: Daemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(daemon.socket_path))
        self.decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)

    def send(self, message: protocol.Message | bytes) -> None:
        data = message if isinstance(message, bytes) else protocol.encode(message)
        self.sock.sendall(data)

    def reply(self) -> protocol.Message:
        while True:
            message = self.decoder.next_message()
            if message is protocol.NEED_DATA:
                self.decoder.receive_data(self.sock.recv(65536))
                continue
            assert isinstance(message, protocol.Message.__args__)  # type: ignore[attr-defined]
            return message  # type: ignore[return-value]

    def ask(self, message: protocol.Message | bytes) -> protocol.Message:
        self.send(message)
        return self.reply()

    def intern(self, entries: int) -> int:
        reply = self.ask(protocol.InternRequest(entries))
        assert isinstance(reply, protocol.InternReply)
        return reply.granted

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Numbering:
    """A client's two tables, as simple as can be: value -> id, new ids in order;
    forget() starts again at id 0, so later messages redefine ids."""

    def __init__(self) -> None:
        self.ids: list[dict[str, int]] = [{}, {}]
        self.next = [0, 0]

    def forget(self) -> None:
        self.ids, self.next = [{}, {}], [0, 0]

    def message(self, pairs: Sequence[Pair]) -> protocol.RecordInterned:
        parts: list[object] = []
        for column in (0, 1):
            first, new, ids = self.next[column], [], []
            table = self.ids[column]
            for pair in pairs:
                value = pair[column]
                if value is None:
                    ids.append(NIL)
                    continue
                if value not in table:
                    table[value] = self.next[column]
                    self.next[column] += 1
                    new.append(value)
                ids.append(table[value])
            parts += [first, new, refs(ids)]
        return protocol.RecordInterned(*parts)  # type: ignore[arg-type]


def counts(status: Status) -> tuple[object, ...]:
    return (
        status.unique_conn_ips, status.unique_domains, status.unique_ip_servers,
        status.records, status.rejected_conn_ips, status.rejected_senders,
        status.estimated,
        tuple((w.window, w.unique_conn_ips, w.unique_domains, w.unique_ip_servers)
              for w in status.windows),
    )  # fmt: skip


IPS = ["192.0.2.1", "[192.0.2.2]", "::ffff:192.0.2.1", "2001:DB8::1", "fe80::1%eth0",
       "not-an-ip", "", "10.0.0.300", "IPv6:2001:db8::1"]  # fmt: skip
SENDERS = ["user@example.com", "<a@B.example.>", "<>", "[192.0.2.1]", "x@[IPv6:2001:db8::1]",
           "bad@@", "", "Bücher.de", "u@xn--bcher-kva.de", "@relay:u@c.example",
           "no-local@", "192.0.2.9", "u@" + "x" * 600]  # fmt: skip


def mixed_pairs(count: int, salt: int) -> list[Pair]:
    """Repeats, nils, rejected and ignored values, IP literals, <>."""
    pairs: list[Pair] = []
    for i in range(count):
        ip = None if i % 11 == 3 else IPS[(i * 7 + salt) % len(IPS)]
        sender = None if i % 13 == 5 else SENDERS[(i * 5 + salt) % len(SENDERS)]
        if i % 4 == 0:
            ip = f"198.51.{salt % 256}.{i % 256}"
        if i % 6 == 1:
            sender = f"w{i % 37}@d{(i + salt) % 29}.example"
        pairs.append((ip, sender))
    return pairs


def test_interned_counts_exactly_as_columns(make_daemon: Callable[..., Daemon]) -> None:
    by_columns = make_daemon("a").start()
    by_interned = make_daemon("b").start()
    batches = [mixed_pairs(n, salt) for salt, n in enumerate([1, 40, 300, 5, 2000, 17])]
    with Peer(by_columns) as peer:
        for batch in batches:
            peer.send(protocol.RecordColumns([p[0] for p in batch], [p[1] for p in batch]))
        assert peer.ask(protocol.Ping()) == protocol.Pong()
    numbering = Numbering()
    with Peer(by_interned) as peer:
        assert protocol.FEATURE_INTERNED in peer.ask(protocol.FeaturesRequest()).names  # type: ignore[union-attr]
        assert peer.intern(100_000) == 100_000
        for at, batch in enumerate(batches):
            if at == 4:
                numbering.forget()  # ids 0, 1, ... now name other values: redefinitions
            peer.send(numbering.message(batch))
        assert peer.ask(protocol.Ping()) == protocol.Pong()
    expected, got = counts(by_columns.status()), counts(by_interned.status())
    assert got == expected
    assert expected[3] == sum(map(len, batches))  # records
    assert all(expected[i] for i in (0, 1, 2, 4, 5))  # every kind of value was there


def test_a_message_of_references_only_counts_again(daemon: Daemon) -> None:
    with Peer(daemon) as peer:
        assert peer.intern(8) == 8
        peer.send(protocol.RecordInterned(0, ["192.0.2.1", "nope"], refs([0, 1, NIL]),
                                          0, ["a@b.example"], refs([0, 0, 0])))  # fmt: skip
        for _ in range(3):
            peer.send(protocol.RecordInterned(0, [], refs([1, 0]), 0, [], refs([0, NIL])))
        assert peer.ask(protocol.Ping()) == protocol.Pong()
    status = daemon.status()
    assert (status.records, status.rejected_conn_ips, status.rejected_senders) == (9, 4, 0)
    assert (status.unique_conn_ips, status.unique_domains) == (1, 1)
    assert status.health is not None and status.health.interned_messages == 4


GOOD_IPS = (0, ["198.51.100.1"], refs([0]))

VIOLATIONS: dict[str, tuple[object, ...]] = {
    "undefined id": (*GOOD_IPS, 0, [], refs([5])),
    "id >= granted": (*GOOD_IPS, 0, ["a@b.example"], refs([16])),
    "nil and undefined": (0, ["198.51.100.1"], refs([0, 0]), 0, ["a@b.example"], refs([0, 3])),
    "unreferenced definition": (*GOOD_IPS, 0, ["a@b.example", "c@d.example"], refs([0])),
    "first + len > granted": (*GOOD_IPS, 15, ["a@b.example", "c@d.example"], refs([15])),
    "first alone > granted": (*GOOD_IPS, 17, [], refs([NIL])),
    "refs length mismatch": (0, ["198.51.100.1"], refs([0, 0]), 0, ["a@b.example"], refs([0])),
    "bad bin length": (*GOOD_IPS, 0, ["a@b.example"], b"\x00\x00\x00"),
    "nil in new values": (*GOOD_IPS, 0, ["a@b.example", None], refs([0])),
}


def violating_frame(fields: tuple[object, ...]) -> bytes:
    # Packed by hand: the encoder refuses most of these shapes.
    import msgpack

    body = msgpack.packb([1, "interned", *fields], use_bin_type=True)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_every_violation_is_bad_message_and_counts_nothing(daemon: Daemon, name: str) -> None:
    with Peer(daemon) as peer:
        assert peer.intern(16) == 16
        # One valid message first: id 1 of each table is defined, id 0 of neither.
        peer.send(protocol.RecordInterned(1, ["192.0.2.1"], refs([1]),
                                          1, ["x@y.example"], refs([1])))  # fmt: skip
        assert peer.ask(protocol.Ping()) == protocol.Pong()
        before = counts(daemon.status())
        reply = peer.ask(violating_frame(VIOLATIONS[name]))
    assert isinstance(reply, protocol.Error) and reply.code == protocol.ERR_BAD_MESSAGE
    assert reply.message in protocol.ERROR_TEXTS
    assert counts(daemon.status()) == before


@pytest.mark.parametrize("case", ["no intern", "granted 0", "second intern"])
def test_interned_without_a_grant_and_a_second_intern_are_bad_messages(
    make_daemon: Callable[..., Daemon], case: str
) -> None:
    budget = "0" if case == "granted 0" else "320"  # at most 10 ids a connection
    daemon = make_daemon(extra_args=["--max-interned-entries", budget]).start()
    message = protocol.RecordInterned(*GOOD_IPS, 0, ["a@b.example"], refs([0]))
    with Peer(daemon) as peer:
        names = peer.ask(protocol.FeaturesRequest()).names  # type: ignore[union-attr]
        assert (protocol.FEATURE_INTERNED in names) == (case != "granted 0")
        if case == "granted 0":
            assert peer.intern(10) == 0
        if case == "second intern":
            assert peer.intern(10) == 10
            reply = peer.ask(protocol.InternRequest(10))
        else:
            reply = peer.ask(message)
    assert isinstance(reply, protocol.Error) and reply.code == protocol.ERR_BAD_MESSAGE
    assert daemon.status().records == 0


def test_grants_shrink_to_zero_and_return_when_connections_close(
    make_daemon: Callable[..., Daemon],
) -> None:
    # 3,200 entries: at most 100 ids a connection (GRANT_SHARE), two tables each.
    daemon = make_daemon(extra_args=["--max-interned-entries", "3200"]).start()
    peers = [Peer(daemon) for _ in range(17)]
    assert [peer.intern(100) for peer in peers[:15]] == [100] * 15  # 3,000 entries
    assert peers[15].intern(30) == 30  # 3,060
    assert peers[16].intern(100) == 70  # what is left
    with Peer(daemon) as late:
        assert late.intern(5) == 0
    peers[0].close()

    def granted_again() -> bool:
        with Peer(daemon) as probe:
            return probe.intern(100) == 100  # closing the probe gives it back

    wait_for(granted_again, 30, "the closed connection's entries to return")
    for peer in peers[1:]:
        peer.close()


def test_a_value_referenced_in_a_later_period_is_in_the_window(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Windows of 2 s: the value, defined once, is only referenced afterwards; each
    reference in a new period must put it back into the short window."""
    daemon = make_daemon(extra_args=["--windows", "2s,60s"]).start()

    def short(status: Status) -> int:
        return status.windows[0].unique_conn_ips

    with Peer(daemon) as peer:
        assert peer.intern(4) == 4
        peer.send(protocol.RecordInterned(0, ["192.0.2.1"], refs([0]), 0, [], refs([NIL])))
        assert peer.ask(protocol.Ping()) == protocol.Pong()
        wait_for(lambda: short(daemon.status()) == 1, 10, "the value in the short window")
        wait_for(lambda: short(daemon.status()) == 0, 20, "the short window to empty")
        # References only, now: the value must come back into the window.
        seen = False
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            peer.send(protocol.RecordInterned(0, [], refs([0]), 0, [], refs([NIL])))
            assert peer.ask(protocol.Ping()) == protocol.Pong()
            seen = short(daemon.status()) == 1
            time.sleep(0.1)
        assert seen, "a value only referenced never came back into the short window"
    assert daemon.status().unique_conn_ips == 1


def test_a_value_only_referenced_after_the_epoch_rolls_is_in_the_new_sketch(
    short_tmp: Path, make_daemon: Callable[..., Daemon]
) -> None:
    key = keygen(short_tmp / "fleet.key", 3)
    daemon = make_daemon(extra_args=["--fleet-key-file", str(short_tmp / "fleet.key")]).start()
    values = population(0, 300)
    numbering = Numbering()
    defined = numbering.message(values)
    referenced = numbering.message(values)  # the same values: references only
    assert not referenced.ip_new and not referenced.sender_new
    with Peer(daemon) as peer:
        assert peer.intern(1000) == 1000
        for _attempt in range(5):
            before = peer.ask(protocol.FleetRequest()).epochs[0].epoch  # type: ignore[union-attr]
            peer.send(defined)
            first = peer.ask(protocol.FleetRequest()).epochs[0].epoch  # type: ignore[union-attr]
            if first != before:
                continue  # an epoch began between the two
            wait_for(
                lambda f=first: peer.ask(protocol.FleetRequest()).epochs[0].epoch > f,  # type: ignore[misc, union-attr]
                15,
                "the next epoch",
            )
            peer.send(referenced)
            reply = peer.ask(protocol.FleetRequest())
            assert isinstance(reply, protocol.FleetReply)
            if reply.epochs[0].epoch == first + 1:
                break
        else:
            raise AssertionError("no epoch lasted long enough to look at it")
    assert_both_epochs_hold(reply, first, key, 300)


def test_a_costly_interned_message_is_counted_in_slices(daemon: Daemon) -> None:
    """Another connection is answered while an interned message of costly new values
    is defined: its status shows the definitions' values counted, the records not."""
    from fuzz.hostile_names import flood_pairs

    count = 2000
    with daemon.connect(timeout=60) as other, Peer(daemon) as peer:
        assert peer.intern(count) == count
        mid_message: list[Status] = []
        for number in range(8):
            pairs = flood_pairs(number, count)
            ids = refs(range(count))
            peer.send(protocol.RecordInterned(0, [ip for ip, _ in pairs], ids,
                                              0, [s for _, s in pairs], ids))  # fmt: skip
            done = (number + 1) * count
            while (status := other.status()).records < done:
                if status.unique_conn_ips > number * count:
                    mid_message.append(status)  # between two slices of its definitions
            if mid_message:
                break
        assert mid_message, "no reply came while an interned message was defined"
        assert all(s.records == number * count for s in mid_message)
        final = other.status()
    assert (final.records, final.unique_conn_ips) == (done, done)
