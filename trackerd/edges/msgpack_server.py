"""The msgpack protocol server: one task per connection, dispatching decoded messages.

Records are applied to the tracker as soon as their frame is complete, in
order, so a status or ping reply on a connection reflects every record sent
before it on that connection. A peer that sends garbage gets an error reply
and is closed; everyone else goes on. Memory per connection is bounded by the
decoder, and across connections by a global budget for unfinished frames: past
it, the connections whose unfinished frames began first are closed with "busy",
so peers that trickle frames cannot lock out one that sends its frame whole.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import anyio
from anyio.abc import SocketStream

from servertracker import protocol
from servertracker.errors import ProtocolError
from servertracker.paths import SOCKET_OPTION
from trackerd.core.tracker import STATUS_FIELDS, Tracker
from trackerd.edges.access import AllowLists, ConnectionLimits, LogThrottle
from trackerd.edges.endpoint import ListenerSettings
from trackerd.edges.socket_files import SocketFileSettings
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import ERR_BUSY, FrameClock, StreamServer
from trackerd.option_types import Arguments

log = logging.getLogger(__name__)

#: Fleet sketch names in category order: the status fields' names.
FLEET_NAMES = tuple(STATUS_FIELDS[category] for category in sorted(STATUS_FIELDS))

TEXT_BUFFERS_FULL = "server buffers full"


class _Holder:
    """One connection's share of the unfinished-frame budget."""

    __slots__ = ("buffered", "clock", "shed", "waiting")

    def __init__(self) -> None:
        self.buffered = 0
        self.clock = FrameClock()
        self.shed = False
        self.waiting: anyio.CancelScope | None = None


#: FileDescriptorName= of this listener's socket in systemd/trackerd.socket.
FD_NAME = "trackerd"


class TrackerServer(StreamServer):
    """Serves the tracker protocol (docs/protocol.md)."""

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        """The socket file's owner, group and mode (the path is paths.py's --socket)."""
        SocketFileSettings.add_arguments(arguments, SOCKET_OPTION.flag, "the socket")

    @classmethod
    def listener_from_args(cls, args: argparse.Namespace, path: Path) -> ListenerSettings:
        return ListenerSettings(
            FD_NAME, path, SocketFileSettings.from_args(args, SOCKET_OPTION.flag)
        )

    def __init__(
        self,
        tracker: Tracker,
        writer: StatusWriter,
        *,
        allow: AllowLists | None = None,
        limits: ConnectionLimits | None = None,
        max_message_size: int = protocol.MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(allow=allow, limits=limits)
        self._tracker = tracker
        self._writer = writer
        self._max_message_size = max_message_size
        self._buffered_total = 0
        # Connections with an unfinished frame, in the order their frames began.
        self._holders: dict[_Holder, None] = {}
        self._error_log = LogThrottle(1.0)
        self.protocol_errors = 0

    def refusal(self, code: str, text: str) -> bytes:
        return protocol.encode(protocol.Error(code, text))

    async def serve_connection(self, stream: SocketStream) -> None:
        decoder = protocol.MessageDecoder(self._max_message_size)
        holder = _Holder()
        try:
            while True:
                with anyio.CancelScope() as holder.waiting:
                    data = await self.receive(stream, self.deadline(holder.clock.started))
                holder.waiting = None
                if holder.shed:
                    await self._send_busy(stream)
                    return
                if data is None:
                    return
                decoder.receive_data(data)
                try:
                    await self._dispatch_all(stream, decoder)
                except ProtocolError as exc:
                    self.protocol_errors += 1
                    if self._error_log.ready() is not None:
                        # The text is one of protocol.ERROR_TEXTS: it holds no input.
                        log.warning(
                            "closing a connection after a protocol error: %s (%s)",
                            exc.message,
                            exc.code,
                        )
                    await self.send(stream, protocol.encode(protocol.Error(exc.code, exc.message)))
                    return
                if not data:
                    return  # end of stream, and every complete frame handled
                self._account(holder, decoder)
                if holder.shed:
                    await self._send_busy(stream)
                    return
        finally:
            self._release(holder)

    def _account(self, holder: _Holder, decoder: protocol.MessageDecoder) -> None:
        """Update this connection's share; past the budget, shed the oldest frames."""
        if holder.shed:
            return  # its share is released already; it closes next
        clock = holder.clock
        started = clock.started
        clock.update(decoder.buffered > 0, decoder.frames)
        if clock.started != started:  # a frame ended, or a new one began
            self._holders.pop(holder, None)
            if clock.started is not None:
                self._holders[holder] = None  # last: the newest frame
        self._buffered_total += decoder.buffered - holder.buffered
        holder.buffered = decoder.buffered
        while self._buffered_total > self.limits.max_buffered_total and self._holders:
            oldest = next(iter(self._holders))
            self._release(oldest)
            oldest.shed = True
            if oldest.waiting is not None:
                oldest.waiting.cancel()
            self.busy += 1
            suppressed = self._busy_log.ready()
            if suppressed is not None:
                log.warning(
                    "unfinished frames exceed %d bytes across connections: closed the one "
                    "whose frame began first (%d more since)",
                    self.limits.max_buffered_total,
                    suppressed,
                )

    def _release(self, holder: _Holder) -> None:
        self._holders.pop(holder, None)
        self._buffered_total -= holder.buffered
        holder.buffered = 0

    async def _send_busy(self, stream: SocketStream) -> None:
        await self.send(stream, protocol.encode(protocol.Error(ERR_BUSY, TEXT_BUFFERS_FULL)))

    async def _dispatch_all(self, stream: SocketStream, decoder: protocol.MessageDecoder) -> None:
        """Handle every complete message buffered."""
        recorded = False
        try:
            while True:
                message = decoder.next_message()
                if message is protocol.NEED_DATA or message is protocol.CLOSED:
                    return
                if isinstance(message, protocol.RecordColumns | protocol.Record):
                    if isinstance(message, protocol.RecordColumns):
                        self._tracker.record_columns(message.conn_ips, message.senders)
                    else:
                        self._tracker.record_pairs(message.pairs)
                    recorded = True
                    # Its values are done with: none lives on while other peers run.
                    del message
                    # Let other connections in between two messages: a status query
                    # waits for one message of each busy peer, not for a whole read.
                    await anyio.lowlevel.checkpoint()
                elif isinstance(message, protocol.StatusRequest):
                    await self.send(
                        stream, protocol.encode(protocol.StatusReply(self._tracker.status()))
                    )
                elif isinstance(message, protocol.FeaturesRequest):
                    await self.send(stream, protocol.encode(protocol.Features(protocol.FEATURES)))
                elif isinstance(message, protocol.Ping):
                    await self.send(stream, protocol.encode(protocol.Pong()))
                elif isinstance(message, protocol.FleetRequest):
                    await self.send(stream, protocol.encode(self._fleet_reply()))
                else:
                    raise ProtocolError(
                        protocol.ERR_UNEXPECTED, "a client may not send this message"
                    )
        finally:
            if recorded:
                self._writer.notify_changed()

    def _fleet_reply(self) -> protocol.FleetReply:
        """The fleet sketches (registers only), for any peer the allow-lists admit:
        they are what goes to Redis anyway (docs/fleet.md)."""
        fleet = self._tracker.fleet
        if fleet is None:
            raise ProtocolError(protocol.ERR_FLEET_OFF, protocol.TEXT_FLEET_OFF)
        self._tracker.roll_fleet_epoch()  # a request just after a boundary sees the new epoch
        epochs = tuple(
            protocol.FleetEpoch(epoch, dict(zip(FLEET_NAMES, sketches, strict=True)))
            for epoch, sketches in fleet.snapshot()
        )
        return protocol.FleetReply(fleet.epoch_seconds, epochs)
