"""Serving one connection with asyncio's callbacks, not an anyio stream: the policy listener's.

Through an anyio stream every receive is a task switch, two cancel scopes, a
recv() that finds nothing, and an epoll registration and removal of the socket
(docs/performance.md: most of a Postfix policy request's cost). Here the socket
is registered once, for the connection's life, with asyncio's own transport
(``loop.connect_accepted_socket``), and a BufferedProtocol handles each read as
it arrives: one recv_into, the Session's parsing and answers, one send. This
ties the listener to asyncio, which is what trackerd runs anyio on (main.py);
the rest of the daemon stays anyio.

What StreamServer promises for a stream holds here too, by other means:
admission is StreamServer's, before the transport exists; the idle and frame
timeouts are one timer per connection, moved only when a deadline comes sooner
(it is checked again when it fires); a reply the peer does not read within
SEND_TIMEOUT closes the connection, and no more is read while one waits; at
stop() each connection drains until it is quiet for DRAIN_QUIET_TIME, and
StreamServer.serve() aborts what is left after DRAIN_DEADLINE. Reads land in the
server's shared read buffer (get_buffer), are copied by the Session, and are
overwritten before anything else runs, as StreamServer.receive() does: asyncio
never makes a bytes object of what a peer sent (docs/threat-model.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from anyio.abc import SocketAttribute, SocketStream

from trackerd.edges import stream_server
from trackerd.edges.stream_server import ZEROS, Connection, StreamServer

log = logging.getLogger(__name__)

#: The clock of asyncio's timers (BaseEventLoop.time()), without the method call.
monotonic = time.monotonic


class Session(ABC):
    """One connection's protocol: what to do with the bytes that arrive."""

    #: Sends a reply (the transport's write; set before the first byte arrives).
    write: Callable[[bytes], object]
    #: True while a reply waits for the peer to read it: handle no more frames
    #: (what is received meanwhile waits in the decoder) until resume().
    paused = False

    @abstractmethod
    def received(self, data: memoryview) -> bool:
        """Copy data in and handle what it completes; False closes the connection.

        data is overwritten as soon as this returns."""

    @abstractmethod
    def resume(self) -> bool:
        """The peer read the replies (paused is False again): handle the frames that
        waited; False closes the connection."""

    @abstractmethod
    def ended(self) -> None:
        """The peer closed its side: handle what is left, paused or not."""

    @abstractmethod
    def in_progress(self) -> bool:
        """Whether a frame is unfinished."""

    @abstractmethod
    def finished(self) -> int:
        """How many frames have been finished."""

    @abstractmethod
    def closed(self) -> None:
        """The connection is gone: overwrite what is left of an unfinished frame."""


async def serve_with_callbacks(
    server: StreamServer, stream: SocketStream, session: Session
) -> None:
    """Serve an admitted connection with session until it closes; cancel to abort it.

    The socket moves to an asyncio transport, which closes it (the stream's own
    close afterwards does nothing)."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    sock = stream.extra(SocketAttribute.raw_socket)
    transport, _ = await loop.connect_accepted_socket(
        lambda: CallbackConnection(server, session, closed), sock
    )
    try:
        await closed
    finally:
        transport.abort()  # nothing if it closed already; else cancelled: the drain is over


class CallbackConnection(asyncio.BufferedProtocol):
    """The asyncio side of one connection: reads, timers, flow control, drain."""

    def __init__(
        self, server: StreamServer, session: Session, closed: asyncio.Future[None]
    ) -> None:
        self._server = server
        self._session = session
        self._closed = closed
        self._loop = closed.get_loop()
        self._buffer = server.read_buffer
        self._connection = Connection()
        self._transport: asyncio.Transport | None = None
        self._last_read = monotonic()
        self._draining = False
        # The idle/frame/drain timer, and when it fires (inf: not set).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._send_timer: asyncio.TimerHandle | None = None

    # --- asyncio's calls -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # pause_writing() as soon as a reply is not taken whole: the send timeout starts.
        transport.set_write_buffer_limits(high=0)
        self._session.write = transport.write
        self._connection.waiting = self  # StreamServer.shed() calls cancel()
        self._server.watch_stop(self.drain)
        if self._server.stopping:
            self.drain()
        else:
            self._arm()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer, session = self._buffer, self._session
        try:
            # No await (nor any other connection's read) between the read and the overwrite.
            keep = session.received(memoryview(buffer)[:nbytes])
        finally:
            buffer[:nbytes] = ZEROS[:nbytes]
        self._last_read = monotonic()
        self._handled(keep)

    def _handled(self, keep: bool) -> None:
        """After the session handled input: close, or track its frame in progress."""
        if not keep:
            self._close()
            return
        connection, session = self._connection, self._session
        if connection.shed:
            return
        clock = connection.clock
        # Between frames, as after most reads, there is nothing to track.
        if clock.started is not None or session.in_progress():
            self._server.track(connection, session.in_progress(), session.finished())
            if clock.started is not None:
                self._arm()  # a frame began: its deadline may come before the idle one
        if self._draining:
            self._arm()

    def eof_received(self) -> bool:
        self._session.ended()
        return False  # the transport closes, once the replies are sent

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._send_timer = None
        self._session.closed()
        self._server.forget(self._connection)
        self._server.unwatch_stop(self.drain)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        """A reply waits in the transport's buffer: the peer has SEND_TIMEOUT to take it.

        Meanwhile nothing is read and no more frames are answered, so a peer that
        does not read holds at most one read's frames and one reply in memory."""
        assert self._transport is not None
        self._session.paused = True
        self._transport.pause_reading()
        log.debug("a peer has not read its replies yet: reading from it paused")
        self._send_timer = self._loop.call_later(stream_server.SEND_TIMEOUT, self._reply_not_read)

    def resume_writing(self) -> None:
        assert self._transport is not None
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._session.paused = False
        if self._transport.is_closing():
            return  # closed after a malformed frame, shed, or ended: nothing more to handle
        self._handled(self._session.resume())
        if not self._session.paused:
            self._transport.resume_reading()

    # --- the server's calls --------------------------------------------------------------

    def cancel(self) -> None:
        """Shed by StreamServer (at the connection limit): close."""
        self._close()

    def drain(self) -> None:
        """The daemon is stopping: read until quiet, then close."""
        self._draining = True
        self._last_read = monotonic()
        self._arm()

    # --- timers ------------------------------------------------------------------------

    def _deadline(self) -> float:
        if self._draining:
            return self._last_read + stream_server.DRAIN_QUIET_TIME
        limits = self._server.limits
        idle = limits.idle_timeout
        deadline = self._last_read + idle if idle > 0 else math.inf
        started = self._connection.clock.started
        if started is not None and limits.frame_timeout > 0:
            deadline = min(deadline, started + limits.frame_timeout)
        return deadline

    def _arm(self) -> None:
        """Make the timer fire by the earliest deadline (a later one waits for it)."""
        deadline = self._deadline()
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if monotonic() < self._deadline():
            self._arm()  # data came meanwhile: the deadline moved
            return
        if not self._draining:
            self._server.timeouts += 1
            log.debug("closing a connection: idle, or a frame took too long to arrive")
        self._close()

    def _reply_not_read(self) -> None:
        self._send_timer = None
        self._server.timeouts += 1
        log.info(
            "closing a connection that did not read its reply within %.0fs",
            stream_server.SEND_TIMEOUT,
        )
        assert self._transport is not None
        self._transport.abort()

    def _close(self) -> None:
        assert self._transport is not None
        self._transport.close()
