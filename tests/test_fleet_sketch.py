"""The fleet key and sketch, pure, and the sketch's layout checked against a real Redis."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import pytest

from servertracker import fleet_key, protocol
from servertracker.errors import ProtocolError
from servertracker.fleet_key import FleetKey, FleetKeyError, next_key, value_hasher
from tests.redis_server import RedisServer
from trackerd.core.fleet_sketch import (
    DENSE_SIZE,
    HLL_REGISTERS,
    FleetSketch,
    dense,
    index_and_rank,
    registers_of,
)
from trackerd.core.normalise import Category
from trackerd.core.tracker import Tracker

MASK64 = (1 << 64) - 1


def murmurhash64a(data: bytes, seed: int = 0xADC83B19) -> int:
    """Redis's MurmurHash64A (hyperloglog.c), to compare our registers with its own."""
    m, r = 0xC6A4A7935BD1E995, 47
    h = (seed ^ (len(data) * m)) & MASK64
    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        k = int.from_bytes(data[i : i + 8], "little")
        k = (k * m) & MASK64
        k ^= k >> r
        k = (k * m) & MASK64
        h ^= k
        h = (h * m) & MASK64
    tail = data[whole:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * m) & MASK64
    h ^= h >> r
    h = (h * m) & MASK64
    h ^= h >> r
    return h


def test_sketch_size_is_the_protocols() -> None:
    assert DENSE_SIZE == protocol.FLEET_SKETCH_SIZE


def test_index_and_rank_follow_hllpatlen() -> None:
    assert index_and_rank(0) == (0, 51)  # all zero after the index: the stop bit, Q + 1
    assert index_and_rank(1 << 14) == (0, 1)
    assert index_and_rank((1 << 20) | 5) == (5, 7)
    assert index_and_rank(MASK64) == (HLL_REGISTERS - 1, 1)


def test_dense_round_trip() -> None:
    registers = bytes((i * 7) % 52 for i in range(HLL_REGISTERS))
    encoded = dense(registers)
    assert len(encoded) == DENSE_SIZE
    assert encoded[:4] == b"HYLL" and encoded[4] == 0 and encoded[15] & 0x80
    assert registers_of(encoded) == registers


def test_registers_match_redis_for_its_own_hash(short_tmp: Path) -> None:
    """Registers set from Redis's own MurmurHash64A of elements equal Redis's after
    PFADD of the same elements: the index/rank split and the packing are Redis's."""
    server = RedisServer(short_tmp / "redis").start()
    try:
        client = server.client()
        client.config_set("hll-sparse-max-bytes", 0)  # dense at once
        elements = [b"element-%d" % i for i in range(3000)]
        client.pfadd("theirs", *elements)
        theirs = client.get("theirs")
        assert isinstance(theirs, bytes) and len(theirs) == DENSE_SIZE
        registers = bytearray(HLL_REGISTERS)
        for element in elements:
            index, rank = index_and_rank(murmurhash64a(element))
            registers[index] = max(registers[index], rank)
        ours = dense(registers)
        assert ours[16:] == theirs[16:]
        client.set("ours", ours)
        assert client.pfcount("ours") == client.pfcount("theirs")
        client.pfmerge("merged", "ours", "theirs")
        assert client.pfcount("merged") == client.pfcount("theirs")
    finally:
        server.stop()


def test_sketch_feeds_from_keyed_digest() -> None:
    key = FleetKey(86400, 100, bytes(range(32)))
    sketch = FleetSketch(key)
    sketch.add(Category.DOMAIN, b"example.com")
    digest = value_hasher(key.key, Category.DOMAIN)
    digest.update(b"example.com")
    index, rank = index_and_rank(int.from_bytes(digest.digest(), "little"))
    assert sketch.registers[Category.DOMAIN][index] == rank
    assert sum(sketch.registers[Category.DOMAIN]) == rank
    assert not any(sketch.registers[Category.CONN_IP])


def test_epoch_step_is_one_way_and_forward_only() -> None:
    key = FleetKey(86400, 100, bytes(32))
    later = key.advanced(103)
    assert later.key == next_key(next_key(next_key(key.key)))
    assert later.key != key.key
    with pytest.raises(FleetKeyError, match="earlier epochs cannot be derived"):
        later.advanced(102)
    # The module offers no inverse: its public functions only step forward.
    public = {
        name
        for name, value in vars(fleet_key).items()
        if inspect.isfunction(value) and value.__module__ == fleet_key.__name__ and name[0] != "_"
    }
    assert public == {"epoch_at", "next_key", "value_hasher"}
    assert "key" not in repr(later).replace("FleetKey", "")


def test_sketch_keeps_only_the_current_key() -> None:
    old = FleetKey(86400, 100, bytes(range(32)))
    sketch = FleetSketch(old)
    sketch.advance_to(101)
    held = [v for v in vars(sketch).values()] + [sketch._key.key]
    assert old.key not in held and old not in held
    assert sketch._key.key == next_key(old.key)
    assert sketch.previous is not None
    assert all(type(r) is bytearray for r in sketch.previous[1])  # registers, no key


def test_key_file_round_trip_and_errors() -> None:
    key = FleetKey.generate(1_800_000_000.0)
    assert key.epoch == 1_800_000_000 // 86400
    assert FleetKey.from_text(key.to_text()) == key
    bad = [
        "",
        key.to_text().replace("version 1", "version 2"),
        key.to_text().replace("epoch-seconds 86400", "epoch-seconds 0"),
        key.to_text() + "key 00\n",
        key.to_text().replace(key.key.hex(), "zz" * 32),
    ]
    for text in bad:
        with pytest.raises(FleetKeyError) as caught:
            FleetKey.from_text(text)
        assert key.key.hex() not in str(caught.value)


def test_tracker_feeds_sketch_on_miss_and_starts_again_each_epoch() -> None:
    now = [86400.0 * 100 + 10]
    key = FleetKey(86400, 100, bytes(32))
    sketch = FleetSketch(key)
    tracker = Tracker(clock=lambda: now[0], fleet=sketch)
    pairs = [(f"10.0.{i // 256}.{i % 256}", f"u@d{i}.example") for i in range(500)]
    pairs += [(f"10.1.0.{i}", f"u@[192.0.2.{i}]") for i in range(200)]
    tracker.record_pairs(pairs)
    tracker.record_pairs(pairs)  # cache hits: no change
    first = [bytes(r) for r in sketch.registers]
    assert all(any(r) for r in first)
    tracker.roll_fleet_epoch()
    assert sketch.epoch == 100  # same epoch: nothing moves
    now[0] += 86400
    tracker.roll_fleet_epoch()
    assert sketch.epoch == 101 and sketch.previous is not None
    assert [bytes(r) for r in sketch.previous[1]] == first
    assert not any(any(r) for r in sketch.registers)
    tracker.record_pairs(pairs)  # the same values: registered again in the new epoch
    fresh = FleetSketch(key.advanced(101))
    Tracker(fleet=fresh).record_pairs(pairs)
    for category in Category:
        assert sketch.registers[category] == fresh.registers[category], category
    status = tracker.status()  # and still counted once
    assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (
        700,
        500,
        200,
    )
    assert [e for e, _ in sketch.snapshot()] == [101, 100]


def test_blake2b_person_labels_differ() -> None:
    # The step and the value hashes use distinct labels, so one never equals the other.
    key = bytes(32)
    step = next_key(key)
    value = hashlib.blake2b(b"next epoch", key=key, digest_size=32).digest()
    assert step != value


def test_fleet_messages_round_trip_and_bad_replies_are_refused() -> None:
    sketch = dense(bytes(HLL_REGISTERS))
    reply = protocol.FleetReply(
        86400, (protocol.FleetEpoch(7, {"unique_domains": sketch}), protocol.FleetEpoch(6, {}))
    )
    daemon_side = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)
    daemon_side.receive_data(protocol.encode(reply))
    assert daemon_side.next_message() == reply
    client_side = protocol.MessageDecoder()
    client_side.receive_data(protocol.encode(protocol.FleetRequest()))
    assert client_side.next_message() == protocol.FleetRequest()
    # From a client, "fleet" is a request: what follows is ignored, never built (as "status").
    client_side = protocol.MessageDecoder()
    client_side.receive_data(protocol.encode(reply))
    assert client_side.next_message() == protocol.FleetRequest()
    for bad in (sketch[:-1], b"XXXX" + sketch[4:], sketch + b"\0"):
        wrong = protocol.FleetReply(86400, (protocol.FleetEpoch(7, {"unique_domains": bad}),))
        decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)
        decoder.receive_data(protocol.encode(wrong))
        with pytest.raises(ProtocolError) as caught:
            decoder.next_message()
        assert caught.value.message in protocol.ERROR_TEXTS
