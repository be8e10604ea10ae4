"""The Unix-socket server: one loop per connection, dispatching decoded messages.

Records are applied to the tracker as soon as their frame is complete, in
order, so a status or ping reply on a connection reflects every record sent
before it on that connection. A peer that sends garbage gets an error reply
and is closed; everyone else goes on.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import SocketListener, SocketStream

from servertracker import protocol
from servertracker.errors import ProtocolError
from trackerd.status_writer import StatusWriter
from trackerd.tracker import Tracker

log = logging.getLogger(__name__)

READ_SIZE = 65536
#: A reply the peer does not read within this time closes the connection, so a
#: client that stops reading cannot hold the daemon's memory.
SEND_TIMEOUT = 10.0
#: At shutdown, a connection is drained until no byte arrives for this long.
DRAIN_QUIET_TIME = 0.05
#: ... and for at most this long in all.
DRAIN_DEADLINE = 3.0


class TrackerServer:
    """Serves the tracker protocol on any number of listeners until stop() is called."""

    def __init__(
        self,
        tracker: Tracker,
        writer: StatusWriter,
        *,
        max_message_size: int = protocol.MAX_MESSAGE_SIZE,
    ) -> None:
        self._tracker = tracker
        self._writer = writer
        self._max_message_size = max_message_size
        self._stopping = False
        self._receive_scopes: set[anyio.CancelScope] = set()
        self._accept_scope = anyio.CancelScope()
        self.connections_open = 0
        self.connections_total = 0
        self.protocol_errors = 0

    async def serve(self, listener: SocketListener) -> None:
        """Accept and serve until stop(); then drain open connections and return."""
        async with anyio.create_task_group() as connections:
            with self._accept_scope:
                await listener.serve(self._handle, connections)
            await listener.aclose()
            with anyio.move_on_after(DRAIN_DEADLINE) as drain:
                while self.connections_open:
                    await anyio.sleep(0.01)
            if drain.cancelled_caught:
                log.warning(
                    "%d connections still open at shutdown; closing them", self.connections_open
                )
                connections.cancel_scope.cancel()

    def stop(self) -> None:
        """Stop accepting; make every connection drain what it was sent, then close."""
        self._stopping = True
        self._accept_scope.cancel()
        for scope in self._receive_scopes:
            scope.cancel()

    async def _receive(self, stream: SocketStream) -> bytes | None:
        """The next bytes from the peer; b"" at end of stream, None when draining is done."""
        try:
            if self._stopping:
                with anyio.move_on_after(DRAIN_QUIET_TIME):
                    return await stream.receive(READ_SIZE)
                return None
            with anyio.CancelScope() as scope:
                self._receive_scopes.add(scope)
                try:
                    return await stream.receive(READ_SIZE)
                finally:
                    self._receive_scopes.discard(scope)
            # Cancelled by stop(): nothing was consumed; go round again in drain mode.
            return await self._receive(stream)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return b""

    async def _send(self, stream: SocketStream, data: bytes) -> bool:
        with anyio.move_on_after(SEND_TIMEOUT):
            try:
                await stream.send(data)
                return True
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return False
        log.info("closing a connection that did not read its reply within %.0fs", SEND_TIMEOUT)
        return False

    async def _handle(self, stream: SocketStream) -> None:
        self.connections_open += 1
        self.connections_total += 1
        try:
            async with stream:
                await self._serve_connection(stream)
        finally:
            self.connections_open -= 1

    async def _serve_connection(self, stream: SocketStream) -> None:
        decoder = protocol.MessageDecoder(self._max_message_size)
        while True:
            data = await self._receive(stream)
            if data is None:
                return
            decoder.receive_data(data)
            try:
                if not await self._dispatch_all(stream, decoder):
                    return
            except ProtocolError as exc:
                self.protocol_errors += 1
                # The message text never holds a recorded value (see protocol.py).
                log.warning(
                    "closing a connection after a protocol error: %s (%s)", exc.message, exc.code
                )
                await self._send(stream, protocol.encode(protocol.Error(exc.code, exc.message)))
                return

    async def _dispatch_all(self, stream: SocketStream, decoder: protocol.MessageDecoder) -> bool:
        """Handle every complete message buffered; False when the connection is done."""
        recorded = False
        try:
            while True:
                message = decoder.next_message()
                if message is protocol.NEED_DATA:
                    return True
                if message is protocol.CLOSED:
                    return False
                if isinstance(message, protocol.Record):
                    self._tracker.record_pairs(message.pairs)
                    recorded = True
                elif isinstance(message, protocol.StatusRequest):
                    reply = protocol.StatusReply(self._tracker.status())
                    if not await self._send(stream, protocol.encode(reply)):
                        return False
                elif isinstance(message, protocol.Ping):
                    if not await self._send(stream, protocol.encode(protocol.Pong())):
                        return False
                else:
                    raise ProtocolError(
                        protocol.ERR_UNEXPECTED, "a client may not send this message"
                    )
        finally:
            if recorded:
                self._writer.notify_changed()
