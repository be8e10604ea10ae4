"""The Postfix policy delegation listener: Postfix's smtpd feeds the tracker with no code.

Each request records its ``client_address`` and ``sender`` with the same rules
as every other record, and is answered at once with ``action=DUNNO``: trackerd
never delays or changes a mail decision, and never waits on the status file.
A message with many recipients asks once per RCPT with the same ``instance``;
it is recorded once. A malformed or over-long request is logged and the
connection closed without a reply (Postfix then applies its default_action).
"""

from __future__ import annotations

import collections
import logging

from anyio.abc import SocketStream

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
from trackerd.edges.access import AccessPolicy, ConnectionLimits, LogThrottle
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import StreamServer

log = logging.getLogger(__name__)

#: Postfix sends all requests about one message over one connection, so a few
#: recent instance ids per connection are all the bookkeeping needed.
RECENT_INSTANCES = 16


class PolicyServer(StreamServer):
    def __init__(
        self,
        tracker: Tracker,
        writer: StatusWriter,
        *,
        policy: AccessPolicy | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(policy=policy, limits=limits)
        self._tracker = tracker
        self._writer = writer
        self._error_log = LogThrottle(1.0)
        self.requests = 0
        self.protocol_errors = 0

    async def serve_connection(self, stream: SocketStream) -> None:
        decoder = PolicyDecoder()
        recent: collections.deque[str] = collections.deque(maxlen=RECENT_INSTANCES)
        request_started: float | None = None
        while True:
            data = await self.receive(stream, self.deadline(request_started))
            if data is None:
                return
            decoder.receive_data(data)
            try:
                while (request := decoder.next_request()) is not NEED_DATA:
                    assert isinstance(request, dict)
                    self._record(request, recent)
                    await self.send(stream, DUNNO_RESPONSE)
            except PolicyProtocolError as exc:
                self.protocol_errors += 1
                if self._error_log.ready() is not None:
                    log.warning("closing a Postfix policy connection: %s", exc)
                return
            if not data or decoder.closed_cleanly:
                return
            request_started = None  # a request in progress may take one frame timeout

    def _record(self, request: dict[str, str], recent: collections.deque[str]) -> None:
        self.requests += 1
        instance = request.get(INSTANCE)
        if instance:
            if instance in recent:
                return  # another recipient of a message already recorded
            recent.append(instance)
        self._tracker.record_server(request.get(CLIENT_ADDRESS), request.get(SENDER))
        self._writer.notify_changed()
