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

Beyond that: a session handles a capped number of frames per call (backlog), the
rest wait their turn with reading paused; when a connection closes, the session
deals with the complete frames it still holds (closed()); and an error in any of
asyncio's calls into a connection is logged by type and place, not text, and
aborts that connection only, never the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from anyio.abc import SocketAttribute, SocketStream

from trackerd.edges import stream_server
from trackerd.edges.stream_server import ZEROS, Connection, StreamServer

log = logging.getLogger(__name__)

#: The clock of asyncio's timers (BaseEventLoop.time()), without the method call.
monotonic = time.monotonic

P = ParamSpec("P")
R = TypeVar("R")


class Session(ABC):
    """One connection's protocol: what to do with the bytes that arrive."""

    #: Sends a reply (the transport's write; set before the first byte arrives).
    write: Callable[[bytes], object]
    #: True while a reply waits for the peer to read it: handle no more frames
    #: (what is received meanwhile waits in the decoder) until resume().
    paused = False
    #: True when a call stopped at its cap of frames with more perhaps complete:
    #: nothing more is read, and resume() goes on in a later turn of the loop, so
    #: that a peer that pipelines cannot keep the others waiting.
    backlog = False

    @abstractmethod
    def received(self, data: memoryview) -> bool:
        """Copy data in and handle what it completes; False closes the connection.

        data is overwritten as soon as this returns."""

    @abstractmethod
    def resume(self) -> bool:
        """The peer read the replies (paused is False again), or frames wait past the
        cap (backlog): handle the frames that waited; False closes the connection."""

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
        """The connection is gone: deal with the complete frames not handled yet
        (the peer sent them), overwrite what is left of an unfinished one."""


async def serve_with_callbacks(
    server: StreamServer, stream: SocketStream, session: Session
) -> None:
    """Serve an admitted connection with session until it closes; cancel to abort it.

    The socket moves to an asyncio transport, which closes it (the stream's own
    close afterwards does nothing)."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    sock = stream.extra(SocketAttribute.raw_socket)
    transport, protocol = await loop.connect_accepted_socket(
        lambda: CallbackConnection(server, session, closed), sock
    )
    assert isinstance(protocol, CallbackConnection)
    try:
        await closed
    finally:
        if not closed.done():
            # Cancelled: the drain is over. (Once connection_lost() ran, the transport
            # is gone: its abort() would touch the loop it already let go of.)
            transport.abort()
            protocol.lost()  # now, not in a later callback: the daemon may be ending


def _guarded(
    method: Callable[Concatenate[CallbackConnection, P], R],
) -> Callable[Concatenate[CallbackConnection, P], R | None]:
    """One of asyncio's calls into a connection: what goes wrong in it closes that
    connection only (asyncio would log the error with its text, which may hold what
    a peer sent, and a failure in the serving task would end the daemon)."""

    def guarded(self: CallbackConnection, /, *args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # any bug: this connection, not the daemon
            self.failed(exc)
            return None

    return guarded


def log_failure(exc: BaseException) -> None:
    """Log an unexpected error by its type and where it happened, never by its text."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    log.error("closing a connection after an internal error: %s%s", type(exc).__name__, where)


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
        # Closed by the daemon (timeout, shed, drain, malformed frame): its timers
        # have nothing more to time out, and it is not counted again.
        self._closed_here = False
        self._lost = False
        # The idle/frame/drain timer, and when it fires (inf: not set).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._send_timer: asyncio.TimerHandle | None = None
        # The call that goes on with frames held past Session.backlog's cap.
        self._more: asyncio.Handle | None = None

    # --- asyncio's calls -----------------------------------------------------------------

    @_guarded
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

    @_guarded
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
        session = self._session
        if session.backlog:
            self._hold()
        connection = self._connection
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

    def _hold(self) -> None:
        """Frames wait past the cap of one call: read no more, go on in a later call
        (after the other connections' reads that are ready), in turn."""
        assert self._transport is not None
        self._transport.pause_reading()
        if self._more is None:
            self._more = self._loop.call_soon(self._go_on)

    @_guarded
    def _go_on(self) -> None:
        assert self._transport is not None
        self._more = None
        if self._transport.is_closing() or self._session.paused:
            return  # closed; or a reply waits: resume_writing() goes on
        self._handled(self._session.resume())
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Read again, unless a reply waits unread or frames wait their turn."""
        assert self._transport is not None
        session = self._session
        if not (session.paused or session.backlog or self._transport.is_closing()):
            self._transport.resume_reading()

    @_guarded
    def eof_received(self) -> bool:
        self._session.ended()
        return False  # the transport closes, once the replies are sent

    @_guarded
    def connection_lost(self, exc: Exception | None) -> None:
        self.lost()

    def lost(self) -> None:
        """The connection is gone, or being aborted: stop its timers, and let the
        session record and overwrite what it holds. Once; never raises."""
        if self._lost:
            return
        self._lost = True
        try:
            for handle in (self._timer, self._send_timer, self._more):
                if handle is not None:
                    handle.cancel()
            self._timer = self._send_timer = self._more = None
            self._server.forget(self._connection)
            self._server.unwatch_stop(self.drain)
            self._session.closed()
        except Exception as exc:  # see _guarded
            log_failure(exc)
        finally:
            if not self._closed.done():
                self._closed.set_result(None)

    def failed(self, exc: Exception) -> None:
        """An unexpected error in this connection's handling: log it, abort the connection."""
        log_failure(exc)
        if self._transport is not None and not self._closed.done():
            self._transport.abort()  # still open: connection_lost() has not run
        self.lost()

    @_guarded
    def pause_writing(self) -> None:
        """A reply waits in the transport's buffer: the peer has SEND_TIMEOUT to take it.

        Meanwhile nothing is read and no more frames are answered, so a peer that
        does not read holds at most one read's frames and one reply in memory."""
        assert self._transport is not None
        self._session.paused = True
        self._transport.pause_reading()
        log.debug("a peer has not read its replies yet: reading from it paused")
        self._send_timer = self._loop.call_later(stream_server.SEND_TIMEOUT, self._reply_not_read)

    @_guarded
    def resume_writing(self) -> None:
        assert self._transport is not None
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._session.paused = False
        if self._transport.is_closing():
            return  # closed after a malformed frame, shed, or ended: nothing more to handle
        self._handled(self._session.resume())
        self._resume_reading()

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
        if self._closed_here:
            return
        deadline = self._deadline()
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    @_guarded
    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self._closed_here:
            return  # closed already (shed, say): nothing to time out, nothing to count
        if monotonic() < self._deadline():
            self._arm()  # data came meanwhile: the deadline moved
            return
        if self._draining:
            log.debug("drained: closing a connection that is quiet")
        else:
            self._server.timeouts += 1
            log.debug("closing a connection: idle, or a frame took too long to arrive")
        self._close()

    @_guarded
    def _reply_not_read(self) -> None:
        self._send_timer = None
        if self._closed_here:
            # Closed already, and counted if it timed out: its replies are dropped now.
            log.debug("dropping the replies a closed connection did not read")
        else:
            self._server.timeouts += 1
            log.info(
                "closing a connection that did not read its reply within %.0fs",
                stream_server.SEND_TIMEOUT,
            )
        assert self._transport is not None
        if not self._closed.done():
            self._transport.abort()

    def _close(self) -> None:
        """Close: the replies already written are sent first (within SEND_TIMEOUT)."""
        assert self._transport is not None
        self._closed_here = True
        if not self._closed.done():
            self._transport.close()
