"""The Postfix policy delegation listener: Postfix's smtpd feeds the tracker with no code.

Each request records its ``client_address`` and ``sender`` with the same rules
as every other record, and is answered at once with ``action=DUNNO``: trackerd
never delays or changes a mail decision, and never waits on the status file.
A message with many recipients asks once per RCPT with the same ``instance``;
it is recorded once. A malformed or over-long request is logged and the
connection closed without a reply (Postfix then applies its default_action).
A request must arrive whole within the frame timeout of its first byte, so
slow peers cannot hold the connection slots that Postfix needs.

Accepting and admission are StreamServer's, in the event loop; the admitted
connections are served on the listener's own thread (policy_loop.py), where
PolicySession parses and answers; the event loop records what that thread
hands over, in batches and before every status snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from servertracker.error_codes import POLICY_ERROR
from trackerd.core.policy_protocol import (
    DUNNO_RESPONSE,
    NEED_DATA,
    PolicyDecoder,
    PolicyProtocolError,
    Request,
)
from trackerd.core.tracker import Tracker
from trackerd.edges.access import AllowLists, ConnectionLimits, LogThrottle
from trackerd.edges.endpoint import ListenerSettings
from trackerd.edges.policy_loop import Handover, PolicyLoop
from trackerd.edges.session import Session, log_failure
from trackerd.edges.socket_files import SocketFileSettings
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import StreamServer
from trackerd.option_types import Arguments

log = logging.getLogger(__name__)

#: Most requests handled (recorded and answered) in one call from the policy
#: thread; the rest of a read wait for a later turn, after the other connections' reads,
#: so that peers that pipeline thousands cannot keep a well-behaved one waiting.
REQUESTS_PER_TURN = 32

#: Postfix sends all requests about one message over one connection, so a few
#: recent instance ids per connection are all the bookkeeping needed.
RECENT_INSTANCES = 16


POLICY_SOCKET_OPTION = "--postfix-policy-socket"
POLICY_SOCKET_ENV = "TRACKERD_POSTFIX_POLICY_SOCKET"
#: FileDescriptorName= of the policy socket in systemd/trackerd-postfix.socket.
FD_NAME = "postfix-policy"


class PolicyServer(StreamServer):
    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        arguments.add_argument(
            POLICY_SOCKET_OPTION,
            metavar="PATH",
            default=os.environ.get(POLICY_SOCKET_ENV) or None,
            help=(
                "also listen here for Postfix policy delegation requests (check_policy_service; "
                f"see docs/postfix.md). Off by default; also ${POLICY_SOCKET_ENV}"
            ),
        )
        SocketFileSettings.add_arguments(arguments, POLICY_SOCKET_OPTION, "the policy socket")

    @classmethod
    def listener_from_args(cls, args: argparse.Namespace) -> ListenerSettings:
        """Its settings; the path is None unless given (a socket systemd passes still counts)."""
        path = getattr(args, "postfix_policy_socket", None)
        return ListenerSettings(
            FD_NAME,
            Path(path) if path else None,
            SocketFileSettings.from_args(args, POLICY_SOCKET_OPTION),
        )

    def __init__(
        self,
        tracker: Tracker,
        writer: StatusWriter,
        *,
        allow: AllowLists | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(allow=allow, limits=limits)
        self._tracker = tracker
        self._writer = writer
        self._error_log = LogThrottle(1.0)
        # The thread that serves the connections, from the first serve() on.
        self._loop: PolicyLoop | None = None
        self._handover: Handover | None = None
        #: The hand-over's put(), once the thread runs (record() comes after).
        self._put: Callable[[str | None, str | None], None] = _no_thread
        self._serving = 0
        self.protocol_errors = 0

    def _policy_loop(self) -> PolicyLoop:
        if self._loop is None:
            handover = Handover(asyncio.get_running_loop(), self._record_columns)
            self._writer.before_snapshot.append(handover.settle)
            self._handover = handover
            self._put = handover.put
            self._loop = PolicyLoop(self, handover)
            self._loop.start()
        return self._loop

    async def serve(self, listener: SocketListener) -> None:
        """StreamServer.serve(); the last one to end after stop() ends the thread."""
        loop = self._policy_loop()
        self._serving += 1
        try:
            await super().serve(listener)
        finally:
            self._serving -= 1
            if not self._serving and self.stopping:
                await loop.close()

    def stop(self) -> None:
        super().stop()
        if self._loop is not None:
            self._loop.drain_all()

    async def serve_connection(self, stream: SocketStream) -> None:
        """Hand the admitted socket to the policy thread; return when it is closed
        (cancelled: the drain's cap, abort it)."""
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()

        def done() -> None:  # in the policy thread
            # RuntimeError: the loop is closed, the daemon has ended.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, closed)

        # The thread owns the descriptor now; the stream's own close does nothing.
        sock = socket.socket(fileno=stream.extra(SocketAttribute.raw_socket).detach())
        sock.setblocking(False)
        try:
            handle = self._policy_loop().adopt(sock, PolicySession(self), done)
        except Exception as exc:  # one connection's failure is not the daemon's
            sock.close()
            log_failure(exc)
            return
        try:
            await asyncio.shield(closed)
        finally:
            if not closed.done():
                handle.abort()
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await asyncio.shield(closed)

    def _record_columns(
        self, conn_ips: Sequence[str | None], senders: Sequence[str | None], deadline: float
    ) -> int:
        """The event loop's: count what the policy thread handed over, until the
        deadline (Tracker.record_columns); how many pairs were counted."""
        done = self._tracker.record_columns(conn_ips, senders, deadline)
        self._writer.notify_changed()
        return done

    def record(self, request: Request, first_instance: Callable[[str], bool]) -> None:
        """The policy thread's: record a request (hand it to the event loop), unless
        it is another recipient of a message recorded already."""
        client_address, sender, instance = request  # the decoder's USED_ATTRIBUTES
        if instance and not first_instance(instance):
            return
        self._put(client_address, sender)

    def protocol_error(self, exc: PolicyProtocolError) -> None:
        self.count_protocol_error(POLICY_ERROR)
        if self._error_log.ready() is not None:
            log.warning("closing a Postfix policy connection: %s", exc)


class PolicySession(Session):
    """One Postfix connection: requests in, one DUNNO out for each, at once."""

    short_reply = DUNNO_RESPONSE

    def __init__(self, server: PolicyServer) -> None:
        self._server = server
        self._decoder = PolicyDecoder()
        #: The connection's memory of its recent instances (the C loop's, once it
        #: serves the connection: served_by_c()).
        self._recent: Callable[[str], bool] = RecentInstances().first

    def received(self, data: memoryview) -> bool:
        # Nearly always one whole request a read (smtpd waits for each answer):
        # parsed, recorded and answered with the fewest calls. (Reading stops while
        # paused or backlogged, so neither is set here; should one be, the request
        # waits in the decoder.)
        if self.paused or self.backlog:
            self._decoder.receive_data(data)
            return self._answer()
        request = self._decoder.receive_request(data)
        if request is None:
            return self._answer()
        self._server.record(request, self._recent)
        self.write(DUNNO_RESPONSE)
        return True

    def served(self, count: int) -> None:
        # The policy thread's C loop served count reads, each one whole request (the
        # decoder's short way, on a connection whose decoder held nothing).
        self._decoder.requests += count

    def served_by_c(self, first_instance: Callable[[str], bool]) -> None:
        self._recent = first_instance

    def resume(self) -> bool:
        return self._answer()

    def ended(self) -> None:
        # The last requests (at most one read's: reading stops while any wait) are
        # answered whatever the peer reads, and past the cap: the connection ends.
        self._decoder.receive_data(b"")
        while True:
            self.paused = False
            if not self._answer() or not (self.paused or self.backlog):
                return

    def in_progress(self) -> bool:
        return self._decoder.in_progress

    def finished(self) -> int:
        return self._decoder.requests

    def closed(self) -> None:
        """Record the complete requests read but not answered (closed while a reply
        waited, shed, timed out, or at shutdown): the client sent them about real
        mail, and Postfix applies its default_action to them. No answer is sent."""
        held = 0
        try:
            while (request := self._decoder.next_request()) is not NEED_DATA:
                assert isinstance(request, tuple)
                self._server.record(request, self._recent)
                held += 1
        except PolicyProtocolError as exc:
            self._server.protocol_error(exc)  # the rest is dropped, as when it is read
        finally:
            self._decoder.clear()
        if held:
            log.debug("a connection closed with %d requests read, not answered: recorded", held)

    def _answer(self) -> bool:
        """Record and answer the complete requests, REQUESTS_PER_TURN at most (then
        backlog is set); False after a malformed one."""
        # Mostly one request a call: method calls cost less than binding them first.
        decoder, server, recent = self._decoder, self._server, self._recent
        self.backlog = False
        try:
            for _ in range(REQUESTS_PER_TURN):
                if self.paused or (request := decoder.next_request()) is NEED_DATA:
                    return True
                assert isinstance(request, tuple)
                server.record(request, recent)
                self.write(DUNNO_RESPONSE)  # may pause
        except PolicyProtocolError as exc:
            # The rest is dropped, and cleared now: closed() must not find the bad
            # request again and count it twice.
            self._decoder.clear()
            self._server.protocol_error(exc)
            return False
        self.backlog = not self.paused
        return True


class RecentInstances:
    """A connection's last RECENT_INSTANCES instances, the Python way (the C loop
    keeps its own, with the same results: edges/_cpolicy_loop.c)."""

    __slots__ = ("_recent",)

    def __init__(self) -> None:
        self._recent: collections.deque[str] = collections.deque(maxlen=RECENT_INSTANCES)

    def first(self, instance: str) -> bool:
        """False if instance is one of the last; else True, and it is remembered."""
        if instance in self._recent:
            return False
        self._recent.append(instance)
        return True


def _no_thread(conn_ip: str | None, sender: str | None) -> None:
    raise RuntimeError("a policy request recorded before the policy thread began")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
