"""The Postfix policy delegation listener: Postfix's smtpd feeds the tracker with no code.

Each request records its ``client_address`` and ``sender`` with the same rules
as every other record, and is answered at once with ``action=DUNNO``: trackerd
never delays or changes a mail decision, and never waits on the status file.
A message with many recipients asks once per RCPT with the same ``instance``;
it is recorded once. A malformed or over-long request is logged and the
connection closed without a reply (Postfix then applies its default_action).
A request must arrive whole within the frame timeout of its first byte, so
slow peers cannot hold the connection slots that Postfix needs.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import socket
from pathlib import Path

from anyio.abc import SocketAttribute, SocketStream

from servertracker.error_codes import POLICY_ERROR
from trackerd.core.policy_protocol import (
    CLIENT_ADDRESS,
    DUNNO_RESPONSE,
    INSTANCE,
    NEED_DATA,
    SENDER,
    PolicyDecoder,
    PolicyProtocolError,
)
from trackerd.core.tracker import Tracker
from trackerd.edges.access import AllowLists, ConnectionLimits, LogThrottle
from trackerd.edges.endpoint import ListenerSettings
from trackerd.edges.socket_files import SocketFileSettings
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import Connection, StreamServer
from trackerd.errors import ConnectionClosed
from trackerd.option_types import Arguments

log = logging.getLogger(__name__)

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
        self.requests = 0
        self.protocol_errors = 0

    async def serve_connection(self, stream: SocketStream) -> None:
        connection = Connection()
        try:
            await self._serve(stream, connection)
        finally:
            self.forget(connection)

    async def _serve(self, stream: SocketStream, connection: Connection) -> None:
        decoder = PolicyDecoder()
        recent: collections.deque[str] = collections.deque(maxlen=RECENT_INSTANCES)
        raw = stream.extra(SocketAttribute.raw_socket)
        while True:
            # The decoder copies what arrives; the read buffer is then overwritten.
            count = await self.receive_on(connection, stream, decoder.receive_data)
            if count is None:
                return  # a timeout, or shed for a newcomer: Postfix has no "busy"
            if not count:
                decoder.receive_data(b"")
            try:
                while (request := decoder.next_request()) is not NEED_DATA:
                    assert isinstance(request, dict)
                    self._record(request, recent)
                    await self._answer(stream, raw)
            except PolicyProtocolError as exc:
                self.count_protocol_error(POLICY_ERROR)
                if self._error_log.ready() is not None:
                    log.warning("closing a Postfix policy connection: %s", exc)
                return
            if not count or decoder.closed_cleanly:
                return
            self.track(connection, decoder.in_progress, decoder.requests)

    async def _answer(self, stream: SocketStream, raw: socket.socket) -> None:
        """Send DUNNO. The socket nearly always takes 14 bytes at once: send them
        straight away, without the event-loop round trip and the timeout scope of a
        full send (a third of a request's cost); what it does not take goes that way."""
        try:
            sent = raw.send(DUNNO_RESPONSE)  # non-blocking: anyio made it so
        except BlockingIOError:
            sent = 0
        except OSError:
            raise ConnectionClosed from None
        if sent < len(DUNNO_RESPONSE):
            await self.send(stream, DUNNO_RESPONSE[sent:])

    def _record(self, request: dict[str, str], recent: collections.deque[str]) -> None:
        self.requests += 1
        instance = request.get(INSTANCE)
        if instance:
            if instance in recent:
                return  # another recipient of a message already recorded
            recent.append(instance)
        self._tracker.record_server(request.get(CLIENT_ADDRESS), request.get(SENDER))
        self._writer.notify_changed()
