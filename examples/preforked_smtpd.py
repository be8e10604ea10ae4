"""A pre-fork SMTP server on aiosmtpd that feeds trackerd: the way to integrate.

The parent binds one listening socket, imports servertracker, then forks N
workers; each runs its own asyncio loop and aiosmtpd server on the shared
socket and calls ``servertracker.record_server(peer_ip, mail_from)`` in
``handle_MAIL``. Recording never blocks or fails the SMTP session. Messages are
accepted and discarded: this is an example of the hook, not a mail store.

    python examples/preforked_smtpd.py --port 2525 --workers 4

SIGTERM or SIGINT stops the workers; each flushes its pending records at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

import servertracker


class TrackingHandler:
    """aiosmtpd hooks: record each MAIL FROM with the connection's peer address."""

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # record_server() only queues; it never raises, so it cannot break the session.
        servertracker.record_server(session.peer[0], address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 Message accepted"


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    handler = TrackingHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="preforked-smtpd", enable_SMTPUTF8=True), sock=sock
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def run_worker(sock: socket.socket) -> None:
    asyncio.run(serve(sock))
    # Leaving normally runs atexit, which flushes servertracker's queue.
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)

    sock = socket.create_server((args.host, args.port), reuse_port=False, backlog=128)
    sock.setblocking(False)
    print(
        f"listening on {args.host}:{sock.getsockname()[1]} with {args.workers} workers", flush=True
    )

    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            run_worker(sock)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, wait_status = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(wait_status)
    return status


if __name__ == "__main__":
    sys.exit(main())
