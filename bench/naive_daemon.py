"""A naive batched anyio daemon speaking trackerd's protocol: the quick prototype
that bench.compare holds trackerd against. Not part of the product.

Run: ``python -m bench.naive_daemon --runtime-dir DIR``. One task per connection;
it lists the ``columns`` feature (not ``interned``), so clients send it
``columns`` messages, as a prototype would take them today; each is counted pair
by pair: a dict from the raw value to its digest (so each distinct value is
normalised once), then Python sets of digests. No limits, no timeouts, no status
file: only what the benchmark needs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import anyio
from anyio.abc import SocketStream

from servertracker import protocol
from servertracker.status import Status
from trackerd.core.normalise import Category, classify_conn_ip, classify_sender


class Naive:
    def __init__(self) -> None:
        salt = secrets.token_bytes(32)
        self.hashers = [
            hashlib.blake2b(key=salt, digest_size=8, person=b"n-%d" % c) for c in Category
        ]
        self.sets: list[set[bytes]] = [set(), set(), set()]
        self.ip_cache: dict[str | None, bytes | None] = {}
        self.sender_cache: dict[str | None, tuple[int, bytes] | None] = {}
        self.records = 0
        self.boot = int(time.time())

    def digest(self, category: int, key: bytes) -> bytes:
        h = self.hashers[category].copy()
        h.update(key)
        return h.digest()

    def record(self, pairs: Iterable[protocol.Pair]) -> None:
        records = 0
        for ip, sender in pairs:
            records += 1
            if ip not in self.ip_cache:
                key = classify_conn_ip(ip)
                self.ip_cache[ip] = self.digest(0, key) if type(key) is bytes else None
            digest = self.ip_cache[ip]
            if digest is not None:
                self.sets[0].add(digest)
            if sender not in self.sender_cache:
                c = classify_sender(sender)
                self.sender_cache[sender] = (c[0], self.digest(*c)) if type(c) is tuple else None
            found = self.sender_cache[sender]
            if found is not None:
                self.sets[found[0]].add(found[1])
        self.records += records

    def status(self) -> Status:
        ips, domains, literals = (len(s) for s in self.sets)
        return Status(self.boot, ips, domains, literals, time.time(), self.records)

    async def serve(self, stream: SocketStream) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            await self._serve(stream)

    async def _serve(self, stream: SocketStream) -> None:
        decoder = protocol.MessageDecoder()
        async with stream:
            while True:
                try:
                    data = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                decoder.receive_data(data)
                while (message := decoder.next_message()) is not protocol.NEED_DATA:
                    if isinstance(message, protocol.RecordColumns):
                        self.record(zip(message.conn_ips, message.senders, strict=True))
                    elif isinstance(message, protocol.Record):
                        self.record(message.pairs)
                    elif isinstance(message, protocol.FeaturesRequest):
                        features = protocol.Features((protocol.FEATURE_COLUMNS,))
                        await stream.send(protocol.encode(features))
                    elif isinstance(message, protocol.StatusRequest):
                        await stream.send(protocol.encode(protocol.StatusReply(self.status())))
                    elif isinstance(message, protocol.Ping):
                        await stream.send(protocol.encode(protocol.Pong()))
                    else:  # as an older trackerd: error, close
                        error = protocol.Error(protocol.ERR_UNKNOWN_TYPE, "unknown message type")
                        await stream.send(protocol.encode(error))
                        return


async def main(runtime_dir: Path) -> None:
    naive = Naive()
    listener = await anyio.create_unix_listener(runtime_dir / "trackerd.sock")
    await listener.serve(naive.serve)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.naive_daemon",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runtime-dir", type=Path, required=True, help="where its socket goes")
    parser.add_argument("--log-level", help="accepted like trackerd's, and ignored")
    anyio.run(main, parser.parse_args().runtime_dir)
