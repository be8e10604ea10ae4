"""The floors under bench.policy_cost: servers that answer each Postfix policy
request with DUNNO and do nothing else (no parsing, no recording, no limits).

``asyncio`` (the default) is what one request-and-answer costs on this machine
in Python's asyncio with a BufferedProtocol: the event loop's turn, one
recv_into, one send, the wake-ups. ``thread`` is a dedicated thread with its own
``select.epoll`` loop and non-blocking sockets (recv_into a preallocated buffer,
send of the constant reply), while the main thread idles in an asyncio loop as
trackerd's does. ``python -m bench.policy_floor PATH [--kind KIND]`` serves on
the Unix socket PATH until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import socket
import threading

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


def epoll_loop(listener: socket.socket) -> None:
    """Accept and answer on one thread's own epoll: level-triggered, every ready
    socket of one wake handled before the next epoll_wait."""
    poller = select.epoll()
    listener.setblocking(False)
    poller.register(listener.fileno(), select.EPOLLIN)
    listening = listener.fileno()
    connections: dict[int, tuple[socket.socket, list[bytes]]] = {}
    buffer = bytearray(65536)
    view = memoryview(buffer)
    while True:
        for fd, _ in poller.poll():
            if fd == listening:
                sock, _ = listener.accept()
                sock.setblocking(False)
                connections[sock.fileno()] = (sock, [b""])
                poller.register(sock.fileno(), select.EPOLLIN)
                continue
            sock, tail = connections[fd]
            try:
                count = sock.recv_into(buffer)
            except BlockingIOError:
                continue
            if not count:
                poller.unregister(fd)
                del connections[fd]
                sock.close()
                continue
            data = tail[0] + view[:count]
            answers = data.count(b"\n\n")
            if answers:
                sock.send(DUNNO * answers)
            tail[0] = data[-1:]


async def idle_beside(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    threading.Thread(target=epoll_loop, args=(listener,), daemon=True).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    # Plain argparse, not bench._support: the floor imports asyncio and nothing else.
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="the Unix socket to serve on")
    parser.add_argument("--kind", choices=("asyncio", "thread"), default="asyncio")
    args = parser.parse_args()
    asyncio.run(serve(args.path) if args.kind == "asyncio" else idle_beside(args.path))
