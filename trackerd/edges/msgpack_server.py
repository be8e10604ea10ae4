"""The msgpack protocol server: one task per connection, dispatching decoded messages.

Records are applied to the tracker as soon as their frame is complete, in
order, so a status or ping reply on a connection reflects every record sent
before it on that connection. A large frame is applied in slices with the
event loop let go between them, so no message keeps the others (or the
watchdog) waiting. A peer that sends garbage gets an error reply
and is closed; everyone else goes on. Memory per connection is bounded by the
decoder, and across connections by a global budget for unfinished frames.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
from anyio.abc import SocketStream

from servertracker import protocol
from servertracker.errors import ProtocolError
from servertracker.paths import SOCKET_OPTION
from trackerd.core.tracker import Tracker
from trackerd.edges.access import AllowLists, ConnectionLimits, LogThrottle
from trackerd.edges.endpoint import ListenerSettings
from trackerd.edges.socket_files import SocketFileSettings
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import ERR_BUSY, StreamServer
from trackerd.option_types import Arguments

log = logging.getLogger(__name__)

#: The event loop is let go at least this often while a message is counted, so it
#: is never away for long (issue 12: the target is 50 ms, whatever arrives).
SLICE_SECONDS = 0.002
#: Bounds of a slice, in pairs. The smallest keeps the cost per slice (a call,
#: a checkpoint) small beside its work; at the worst cost of one value (about
#: 120 us, docs/performance.md) it takes about 2 ms.
MIN_SLICE = 16
MAX_SLICE = 16384


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
        self._error_log = LogThrottle(1.0)
        self._slice_pairs = MIN_SLICE  # adapted by _record()
        self.protocol_errors = 0

    async def refuse(self, stream: SocketStream, code: str, text: str) -> None:
        await self.send(stream, protocol.encode(protocol.Error(code, text)))

    async def serve_connection(self, stream: SocketStream) -> None:
        decoder = protocol.MessageDecoder(self._max_message_size)
        counted = 0  # this connection's share of _buffered_total
        frame_started: float | None = None
        try:
            while True:
                deadline = self.deadline(frame_started)
                data = await self.receive(stream, deadline)
                if data is None:
                    return
                decoder.receive_data(data)
                try:
                    await self._dispatch_all(stream, decoder)
                except ProtocolError as exc:
                    self.protocol_errors += 1
                    if self._error_log.ready() is not None:
                        # The message text never holds a recorded value (see protocol.py).
                        log.warning(
                            "closing a connection after a protocol error: %s (%s)",
                            exc.message,
                            exc.code,
                        )
                    await self.send(stream, protocol.encode(protocol.Error(exc.code, exc.message)))
                    return
                if not data:
                    return  # end of stream, and every complete frame handled
                buffered = decoder.buffered
                self._buffered_total += buffered - counted
                counted = buffered
                frame_started = None if not buffered else frame_started or anyio.current_time()
                if self._buffered_total > self.limits.max_buffered_total:
                    self.busy += 1
                    log.warning("unfinished frames exceed %d bytes across connections; closing one",
                                self.limits.max_buffered_total)  # fmt: skip
                    await self.send(
                        stream, protocol.encode(protocol.Error(ERR_BUSY, "server buffers full"))
                    )
                    return
        finally:
            self._buffered_total -= counted

    async def _record(self, pairs: Sequence[protocol.Pair]) -> None:
        """Count a message's pairs in slices, yielding to the event loop after each.

        A 1 MiB frame holds tens of thousands of pairs; counted in one go, new
        values at the worst cost each would keep every other connection, and the
        watchdog notification, waiting for seconds. A slice is sized to take about
        SLICE_SECONDS, from the time the last one took, so a frame of cheap repeats
        goes in a few large slices and a frame of costly new values in many small
        ones. Each pair is counted once and in order; a status reply on another
        connection may show part of a frame counted. Shielded: a frame being
        counted is finished even at shutdown, so a frame counts whole or not at all.
        """
        if len(pairs) <= MIN_SLICE:  # the usual message: one slice, no shield needed
            self._tracker.record_pairs(pairs)
            await anyio.lowlevel.checkpoint()
            return
        with anyio.CancelScope(shield=True):
            start = 0
            while start < len(pairs):
                size = self._slice_pairs
                piece = pairs[start : start + size]
                began = time.perf_counter()
                self._tracker.record_pairs(piece)
                took = time.perf_counter() - began
                start += size
                # Halve or double at most: one odd slice (a page fault, a garbage
                # collection) does not swing the next one far.
                wanted = int(len(piece) * SLICE_SECONDS / took) if took > 0 else MAX_SLICE
                self._slice_pairs = max(MIN_SLICE, size // 2, min(MAX_SLICE, size * 2, wanted))
                # Let other connections, and the watchdog, in between two slices.
                await anyio.lowlevel.checkpoint()

    async def _dispatch_all(self, stream: SocketStream, decoder: protocol.MessageDecoder) -> None:
        """Handle every complete message buffered."""
        recorded = False
        try:
            while True:
                message = decoder.next_message()
                if message is protocol.NEED_DATA or message is protocol.CLOSED:
                    return
                if isinstance(message, protocol.Record):
                    await self._record(message.pairs)
                    recorded = True
                elif isinstance(message, protocol.StatusRequest):
                    await self.send(
                        stream, protocol.encode(protocol.StatusReply(self._tracker.status()))
                    )
                elif isinstance(message, protocol.Ping):
                    await self.send(stream, protocol.encode(protocol.Pong()))
                else:
                    raise ProtocolError(
                        protocol.ERR_UNEXPECTED, "a client may not send this message"
                    )
        finally:
            if recorded:
                self._writer.notify_changed()
