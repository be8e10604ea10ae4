"""Seed inputs and mutations for the fuzzers: valid frames, then bytes bent out of shape."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import msgpack

from servertracker import protocol
from servertracker.status import Status


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def seed_frames() -> list[bytes]:
    """Valid frames of every message type, and a few near misses."""
    status = Status(boot_time=1, unique_conn_ips=2, unique_domains=3, unique_ip_servers=4)
    pairs = [("192.0.2.1", "user@example.com"), ("[IPv6:2001:db8::1]", "<>"), (None, "Bücher.de")]
    frames = [
        protocol.encode(protocol.Record(pairs)),
        protocol.encode(protocol.Record([("198.51.100.7", "x@[192.0.2.9]")] * 40)),
        protocol.encode(protocol.StatusRequest()),
        protocol.encode(protocol.Ping()),
        protocol.encode(protocol.Pong()),
        protocol.encode(protocol.StatusReply(status)),
        protocol.encode(protocol.Error("bad-message", "text")),
        _frame(msgpack.packb([1, "record", [["a", "b", "c"]]])),
        _frame(msgpack.packb([2, "ping"])),
        _frame(msgpack.packb({"v": 1})),
    ]
    return frames


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation of data."""
    buf = bytearray(data)
    choice = rng.randrange(10)
    if choice == 0 and buf:  # flip bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif choice == 1 and buf:  # truncate
        del buf[rng.randrange(len(buf)) :]
    elif choice == 2:  # insert random bytes
        i = rng.randrange(len(buf) + 1)
        buf[i:i] = rng.randbytes(rng.randint(1, 16))
    elif choice == 3 and buf:  # delete a run
        i = rng.randrange(len(buf))
        del buf[i : i + rng.randint(1, 16)]
    elif choice == 4 and len(buf) >= 4:  # lie in the length header
        size = rng.choice(
            [0, 1, len(buf), len(buf) * 2, 2**20, 2**20 + 1, 2**32 - 1, rng.randrange(2**32)]
        )
        buf[0:4] = struct.pack(">I", size)
    elif choice == 5 and buf:  # duplicate a chunk
        i = rng.randrange(len(buf))
        buf[i:i] = buf[i : i + rng.randint(1, 64)]
    elif choice == 6:  # set a byte to a msgpack type marker
        if buf:
            buf[rng.randrange(len(buf))] = rng.choice(
                b"\xc0\xc1\xc2\xc3\xc4\xd9\xdc\xdd\xde\xdf\x90\x80\xa0\xff"
            )
    elif choice == 7:  # deep nesting inside a frame
        depth = rng.randint(1, 5000)
        return _frame(b"\x91" * depth + b"\xc0")
    elif choice == 8:  # pure noise
        return rng.randbytes(rng.randint(0, 64))
    else:  # splice with another seed
        other = rng.choice(seed_frames())
        i = rng.randrange(len(buf) + 1)
        buf[i:] = other[rng.randrange(len(other) + 1) :]
    return bytes(buf)


def mutated_inputs(count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    seeds = seed_frames()
    for _ in range(count):
        data = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            data = mutate(data, rng)
        yield data
