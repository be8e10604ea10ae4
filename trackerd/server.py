"""The Unix-socket server: one task per connection, dispatching decoded messages.

Records are applied to the tracker as soon as their frame is complete, in
order, so a status or ping reply on a connection reflects every record sent
before it on that connection. A peer that sends garbage gets an error reply
and is closed; a peer that is not permitted, idles, dawdles inside a frame or
stops reading is closed; everyone else goes on. Memory per connection is
bounded by the decoder, and across connections by a global budget.
"""

from __future__ import annotations

import logging
import math

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from servertracker import protocol
from servertracker.errors import ProtocolError
from trackerd.access import AccessPolicy, ConnectionLimits, LogThrottle, peer_credentials
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

ERR_FORBIDDEN = "forbidden"
ERR_BUSY = "busy"


class _Closed(Exception):
    """The connection is done; unwinds the connection's task to its cleanup."""


class TrackerServer:
    """Serves the tracker protocol on a listener until stop() is called."""

    def __init__(
        self,
        tracker: Tracker,
        writer: StatusWriter,
        *,
        policy: AccessPolicy | None = None,
        limits: ConnectionLimits | None = None,
        max_message_size: int = protocol.MAX_MESSAGE_SIZE,
    ) -> None:
        self._tracker = tracker
        self._writer = writer
        self._policy = policy or AccessPolicy()
        self._limits = limits or ConnectionLimits()
        self._max_message_size = max_message_size
        self._stopping = False
        self._receive_scopes: set[anyio.CancelScope] = set()
        self._accept_scope = anyio.CancelScope()
        self._buffered_total = 0
        self._refused_log = LogThrottle()
        self._busy_log = LogThrottle()
        self._error_log = LogThrottle(1.0)
        self.connections_open = 0
        self.connections_total = 0
        self.refused = 0
        self.busy = 0
        self.protocol_errors = 0
        self.timeouts = 0

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

    # --- one connection -----------------------------------------------------------------

    async def _handle(self, stream: SocketStream) -> None:
        self.connections_open += 1
        self.connections_total += 1
        try:
            async with stream:
                refusal = self._refusal(stream)
                if refusal is None:
                    await self._serve_connection(stream)
                else:
                    await self._send(stream, protocol.encode(refusal))
        except _Closed:
            pass
        finally:
            self.connections_open -= 1

    def _refusal(self, stream: SocketStream) -> protocol.Error | None:
        """Why this connection may not be served, or None."""
        if self._policy.restricted:
            peer = peer_credentials(stream.extra(SocketAttribute.raw_socket))
            if not self._policy.permits(peer):
                self.refused += 1
                suppressed = self._refused_log.ready()
                if suppressed is not None:
                    who = (
                        f"uid {peer.uid} gid {peer.gid} pid {peer.pid}" if peer else "unknown peer"
                    )
                    log.warning(
                        "refused a connection from %s: not in the allow-lists (%d more since)",
                        who,
                        suppressed,
                    )
                return protocol.Error(ERR_FORBIDDEN, "this user or group may not use trackerd")
        if self.connections_open > self._limits.max_connections:
            self.busy += 1
            suppressed = self._busy_log.ready()
            if suppressed is not None:
                log.warning(
                    "at the limit of %d connections: turned one away (%d more since)",
                    self._limits.max_connections,
                    suppressed,
                )
            return protocol.Error(ERR_BUSY, "too many connections; try again later")
        return None

    async def _serve_connection(self, stream: SocketStream) -> None:
        decoder = protocol.MessageDecoder(self._max_message_size)
        counted = 0  # this connection's share of _buffered_total
        frame_started: float | None = None
        try:
            while True:
                deadline = self._deadline(frame_started)
                data = await self._receive(stream, deadline)
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
                    await self._send(stream, protocol.encode(protocol.Error(exc.code, exc.message)))
                    return
                if not data:
                    return  # end of stream, and every complete frame handled
                buffered = decoder.buffered
                self._buffered_total += buffered - counted
                counted = buffered
                frame_started = None if not buffered else frame_started or anyio.current_time()
                if self._buffered_total > self._limits.max_buffered_total:
                    self.busy += 1
                    log.warning("unfinished frames exceed %d bytes across connections; closing one",
                                self._limits.max_buffered_total)  # fmt: skip
                    await self._send(
                        stream, protocol.encode(protocol.Error(ERR_BUSY, "server buffers full"))
                    )
                    return
        finally:
            self._buffered_total -= counted

    def _deadline(self, frame_started: float | None) -> float:
        now = anyio.current_time()
        limits = self._limits
        deadline = now + limits.idle_timeout if limits.idle_timeout > 0 else math.inf
        if frame_started is not None and limits.frame_timeout > 0:
            deadline = min(deadline, frame_started + limits.frame_timeout)
        return deadline

    async def _receive(self, stream: SocketStream, deadline: float) -> bytes | None:
        """The next bytes: b"" at end of stream, None when the connection should close."""
        try:
            if self._stopping:
                with anyio.move_on_after(DRAIN_QUIET_TIME):
                    return await stream.receive(READ_SIZE)
                return None
            with anyio.CancelScope(deadline=deadline) as scope:
                self._receive_scopes.add(scope)
                try:
                    return await stream.receive(READ_SIZE)
                finally:
                    self._receive_scopes.discard(scope)
            if self._stopping:
                # Cancelled by stop(): nothing was consumed; drain what the peer sent.
                return await self._receive(stream, deadline)
            self.timeouts += 1
            log.debug("closing a connection: idle, or a frame took too long to arrive")
            return None
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return b""

    async def _send(self, stream: SocketStream, data: bytes) -> None:
        """Send, or raise _Closed when the peer is gone or does not read in time."""
        with anyio.move_on_after(SEND_TIMEOUT):
            try:
                await stream.send(data)
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                raise _Closed from None
        self.timeouts += 1
        log.info("closing a connection that did not read its reply within %.0fs", SEND_TIMEOUT)
        raise _Closed

    async def _dispatch_all(self, stream: SocketStream, decoder: protocol.MessageDecoder) -> None:
        """Handle every complete message buffered."""
        recorded = False
        try:
            while True:
                message = decoder.next_message()
                if message is protocol.NEED_DATA or message is protocol.CLOSED:
                    return
                if isinstance(message, protocol.Record):
                    self._tracker.record_pairs(message.pairs)
                    recorded = True
                    # Let other connections in between two messages: a status query
                    # waits for one message of each busy peer, not for a whole read.
                    await anyio.lowlevel.checkpoint()
                elif isinstance(message, protocol.StatusRequest):
                    await self._send(
                        stream, protocol.encode(protocol.StatusReply(self._tracker.status()))
                    )
                elif isinstance(message, protocol.Ping):
                    await self._send(stream, protocol.encode(protocol.Pong()))
                else:
                    raise ProtocolError(
                        protocol.ERR_UNEXPECTED, "a client may not send this message"
                    )
        finally:
            if recorded:
                self._writer.notify_changed()
