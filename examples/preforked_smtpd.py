"""A pre-fork SMTP server on aiosmtpd that feeds trackerd: the way to integrate.

The parent binds one listening socket, imports servertracker and builds its
default client (which sends ``columns``; one asking for value tables would load
numpy there, once for all the workers), then forks N workers; each runs its own
asyncio loop and aiosmtpd server on the shared socket and calls
``servertracker.record_server(peer_ip, mail_from)`` in ``handle_MAIL``.
Recording never blocks or fails the SMTP session. Messages are accepted and
discarded: this is an example of the hook, not a mail store.

    python examples/preforked_smtpd.py --port 2525 --workers 4

It needs aiosmtpd (``pip install aiosmtpd``; servertracker's ``[test]`` extra
installs it too).

SIGTERM or SIGINT stops the workers; each flushes its pending records at exit.
Ctrl-C at a terminal signals the whole process group, workers included, and the
parent forwards a SIGTERM too: a worker stops on the first signal and the rest
do nothing, so none can cut its flush at exit short. A signal that comes while
the parent forks waits until every worker exists, then stops them all.

No handler of a stop signal here: they stay blocked in every thread of every
process, and a thread takes them with sigwait() (the parent: them and its
workers' exits; a worker: the first one, which stops its event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import sys
from collections.abc import Callable

import servertracker
from servertracker.paths import RUNTIME_DIR_HELP, SOCKET_HELP

try:
    from aiosmtpd.smtp import SMTP, Envelope, Session
except ImportError:  # a plain install of servertracker does not bring it
    sys.exit("preforked_smtpd.py needs aiosmtpd: pip install aiosmtpd")

#: The bounds of --workers: at least one process to serve, and not a fork bomb.
MAX_WORKERS = 256


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


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    handler = TrackingHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="preforked-smtpd", enable_SMTPUTF8=True), sock=sock
    )
    async with server:
        # The first stop signal, taken in asyncio's executor thread: it started
        # with this thread's mask, so it blocks them too (see run_worker).
        await asyncio.to_thread(signal.sigwait, STOP_SIGNALS)


def run_worker(sock: socket.socket, mask: set[signal.Signals]) -> None:
    # The stop signals came blocked from the parent (see main), and stay blocked
    # for good: every thread started here (asyncio's, the recorder's flusher)
    # starts with this mask, so the kernel hands no thread a stop signal; it waits
    # for sigwait() (serve), and any after the first waits for ever, harmless up to
    # the end and atexit's flush included. Why not a handler (the stacks of a
    # failed CI run and tests/test_example_smtpd.py):
    # - Python runs a handler in the main thread only, once it runs bytecode. The
    #   kernel hands a process's signal to another thread (the recorder's flusher,
    #   asyncio's executor) when the main thread has one pending already (SIGINT
    #   from the terminal, then SIGTERM from the parent), and the main thread,
    #   idle in epoll_wait, then never ran it: the worker served on.
    # - The second signal ran the handler again inside the first one, in its
    #   Event.set(), which deadlocked on the Event's lock.
    # - The interpreter puts back SIG_DFL after atexit, so a late SIGTERM killed a
    #   worker at its very end (exit status -15), and loop.add_signal_handler()
    #   put back the defaults on closing the loop: KeyboardInterrupt in the flush.
    signal.pthread_sigmask(signal.SIG_SETMASK, mask | STOP_SIGNALS)  # SIGCHLD as before
    asyncio.run(serve(sock))
    # Leaving normally runs atexit, which flushes servertracker's queue.
    sys.exit(0)


def whole(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high, else a usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number ({what})") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"out of range ({what})")
        return number

    return parse


def listen(host: str, port: int) -> socket.socket | None:
    """The listening socket, or None after one line on stderr saying why not."""
    try:
        sock = socket.create_server((host, port), reuse_port=False, backlog=128)
    except OSError as exc:
        # create_server() adds "(while attempting to bind on address ...)": said already.
        why = (exc.strerror or str(exc)).split(" (while attempting")[0]
        if exc.errno == errno.EACCES and 0 < port < 1024:
            why += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
        elif exc.errno == errno.EADDRINUSE:
            why += " (another server listens there: pick another --port)"
        print(f"preforked_smtpd.py: cannot listen on {host}:{port}: {why}", file=sys.stderr)
        return None
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        # As every worker using servertracker's default client: trackerd's own defaults,
        # so a trackerd started with the same environment is found.
        epilog="How it finds trackerd (servertracker's default client, as trackerd "
        "itself and trackerctl do): the socket is "
        + SOCKET_HELP.removeprefix("--socket, else ")
        + "; the runtime directory is "
        + RUNTIME_DIR_HELP.removeprefix("--runtime-dir, else ")
        + ". Set $TRACKERD_SOCKET (or $TRACKERD_RUNTIME_DIR) to reach a trackerd "
        "started elsewhere.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=whole(0, 65535, "0 to 65535; 0 for any free port"),
        default=2525,
        help="the TCP port to listen on, 0 for any free one (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=whole(1, MAX_WORKERS, f"1 to {MAX_WORKERS}"),
        default=4,
        help="the worker processes, each serving SMTP on the shared socket "
        f"(1 to {MAX_WORKERS}; default: %(default)s)",
    )
    args = parser.parse_args(argv)
    # Blocked, and taken by sigwait() below: no handler, so none that a signal
    # coming before the wait could leave unrun while os.wait() blocks, none that
    # could raise KeyboardInterrupt in an at-fork hook (which swallows it), and
    # a signal that comes while the parent forks waits until every worker exists.
    # Each worker inherits the mask, and keeps the stop signals blocked (run_worker).
    waited = STOP_SIGNALS | {signal.SIGCHLD}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)

    sock = listen(args.host, args.port)
    if sock is None:
        return 1
    print(
        f"listening on {args.host}:{sock.getsockname()[1]} with {args.workers} workers", flush=True
    )

    # Before forking, where a client's one-time costs belong: a client that asks
    # for value tables loads numpy here (about 0.2 s, once), not in each worker.
    servertracker.default_client()
    #: The workers not reaped yet: a reaped one's pid may be another process's soon.
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            run_worker(sock, mask)
        children.append(pid)
    status = 0
    while children:
        if signal.sigwait(waited) != signal.SIGCHLD:
            # SIGTERM whichever stop signal came: a SIGINT from a terminal reached
            # the workers already, and each stops on the first signal it gets.
            for child in children:
                os.kill(child, signal.SIGTERM)  # not reaped: it exists, if only as a zombie
            continue
        # One SIGCHLD may stand for several exits: reap every one there is.
        while children and (reaped := os.waitpid(-1, os.WNOHANG))[0]:
            child, wait_status = reaped
            children.remove(child)
            status = status or os.waitstatus_to_exitcode(wait_status)
    return status


if __name__ == "__main__":
    sys.exit(main())
