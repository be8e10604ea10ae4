"""The floor under bench.policy_cost: a server that answers each Postfix policy
request with DUNNO and does nothing else (no parsing, no recording, no limits).

It is what one request-and-answer costs on this machine in Python's asyncio with
a BufferedProtocol (the transport trackerd's policy listener uses): the event
loop's turn, one recv_into, one send, the wake-ups. ``python -m bench.policy_floor
PATH`` serves on the Unix socket PATH until killed.
"""

from __future__ import annotations

import argparse
import asyncio

DUNNO = b"action=DUNNO\n\n"


class Floor(asyncio.BufferedProtocol):
    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer
        self._transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        # One answer per empty line; the bench's requests have no other.
        data = self._tail + self._buffer[:nbytes]
        assert self._transport is not None
        for _ in range(data.count(b"\n\n")):
            self._transport.write(DUNNO)
        self._tail = data[-1:]


async def serve(path: str) -> None:
    loop = asyncio.get_running_loop()
    buffer = bytearray(65536)
    server = await loop.create_unix_server(lambda: Floor(buffer), path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # Plain argparse, not bench._support: the floor imports asyncio and nothing else.
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="the Unix socket to serve on")
    asyncio.run(serve(parser.parse_args().path))
