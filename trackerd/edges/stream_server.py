"""What every trackerd listener shares: accepting, admission, timeouts, draining at stop.

A StreamServer accepts connections until stop(), admits each one or refuses it
(allow-lists by SO_PEERCRED, the connection limit), and gives subclasses a
receive that honours the idle and frame timeouts and turns into a drain at
shutdown, and a send that gives up on a peer that does not read. Subclasses
speak a protocol over it: msgpack_server.py the msgpack one, policy_server.py Postfix's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from servertracker.error_codes import ERR_BUSY, ERR_FORBIDDEN
from trackerd.core.wording import more_since
from trackerd.edges.access import AllowLists, ConnectionLimits, LogThrottle, peer_credentials
from trackerd.errors import ConnectionClosed

log = logging.getLogger(__name__)

#: What one read takes at most (StreamServer.read_size: a listener may take more).
READ_SIZE = 65536
#: The most any listener reads at once (msgpack_server.TrackerServer's).
LARGEST_READ = 256 * 1024
#: Overwrites what a read left in the receive buffer (see StreamServer.receive).
ZEROS = memoryview(bytes(LARGEST_READ))
#: A reply the peer does not read within this time closes the connection, so a
#: client that stops reading cannot hold the daemon's memory.
SEND_TIMEOUT = 10.0
#: Peers that leave a reply unread are logged at most once per this many seconds
#: (and each is counted in timeouts): many such peers cannot flood the log.
UNREAD_LOG_INTERVAL = 1.0
#: At shutdown, a connection is drained until no byte arrives for this long.
DRAIN_QUIET_TIME = 0.05
#: ... and for at most this long in all.
DRAIN_DEADLINE = 3.0

#: The longest a connection's task keeps the event loop while what it reads is
#: ready (Connection.turn_ends), and the time bound of each slice a message is
#: counted in (msgpack_server.py): it is never away for long (issue 12: the target
#: is 50 ms, whatever arrives).
SLICE_SECONDS = 0.002

TEXT_BUSY = "too many connections; try again later"

#: accept() errors that mean "out of a resource": the daemon refuses or waits,
#: never ends (issue 12 §2).
_OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})
#: At the connection limit, a newcomer takes the slot of the connection whose
#: unfinished frame (or request) began first, if that was at least this long ago
#: (or half the frame timeout, if shorter): a frame sent whole takes milliseconds,
#: so only peers that trickle theirs are shed, and they cannot starve real ones.
SHED_AFTER = 1.0
#: Pause after an accept() error that refusing a connection cannot cure.
ACCEPT_BACKOFF_MIN = 0.01
ACCEPT_BACKOFF_MAX = 1.0


class FrameClock:
    """When the frame in progress on one connection began: the frame timeout's clock.

    Its owner tells it, after each read, whether a frame is unfinished and how
    many frames the connection has finished so far. A frame begins in the read
    that finished the one before it (or when none was in progress), so the
    timeout measures one frame from its first byte to its last, however the
    peer's writes are cut (issue 12 §3).
    """

    __slots__ = ("_finished", "started")

    def __init__(self) -> None:
        self.started: float | None = None
        self._finished = 0

    def update(self, in_progress: bool, finished: int, now: float | None = None) -> None:
        """now: the event loop's clock (time.monotonic()), given by a caller that is
        not in the event loop's thread (policy_loop.py)."""
        if not in_progress:
            self.started = None
        elif self.started is None or finished != self._finished:
            self.started = anyio.current_time() if now is None else now
        self._finished = finished


class Wakeable(Protocol):
    def cancel(self) -> object: ...


class Connection:
    """What a server knows of one connection it serves: when its frame in progress
    began, its share of the unfinished-frame budget, and whether it is being shed."""

    __slots__ = ("buffered", "clock", "shed", "sock", "turn_ends", "waiting")

    def __init__(self) -> None:
        self.buffered = 0
        self.clock = FrameClock()
        self.shed = False
        #: What to cancel to make it close when it is shed: the scope of the receive
        #: it waits in, or its connection on the policy thread (policy_loop.py).
        self.waiting: Wakeable | None = None
        #: Its socket, looked up once (receive_on).
        self.sock: socket.socket | None = None
        #: When (time.perf_counter()) its task must let the event loop go next: it
        #: reads what is ready and counts it without a turn of the loop each time,
        #: for SLICE_SECONDS at most (take_turn). 0: at its next step.
        self.turn_ends = 0.0


@dataclass(frozen=True, slots=True)
class ServerStats:
    """What one listener did with connections, at one moment (stats())."""

    connections_open: int
    #: Every connection accepted, served or refused.
    connections_total: int
    #: Refused by the allow-lists.
    refused: int
    #: Turned away or shed: the connection limit, the buffer budget, no descriptors.
    busy: int
    timeouts: int
    #: By code (servertracker.error_codes.PROTOCOL_ERROR_CODES).
    protocol_errors: dict[str, int]
    #: `interned` messages counted (docs/protocol.md); 0 for other listeners.
    interned_messages: int = 0


class StreamServer:
    """Serves connections from a listener until stop() is called."""

    #: The bytes one read takes at most (at most LARGEST_READ).
    read_size = READ_SIZE

    def __init__(
        self, *, allow: AllowLists | None = None, limits: ConnectionLimits | None = None
    ) -> None:
        #: Checked at each accept; replaced as a whole when SIGHUP reloads it.
        self.allow = allow or AllowLists()
        self.limits = limits or ConnectionLimits()
        self._stopping = False
        self._receive_scopes: set[anyio.CancelScope] = set()
        # What else stop() tells: callback connections, which drain on their own.
        self._stop_hooks: set[Callable[[], None]] = set()
        # One per listener: a socket file made again after it was removed gets a
        # listener of its own (see upkeep.py).
        self._accept_scopes: set[anyio.CancelScope] = set()
        self._refused_log = LogThrottle()
        self._busy_log = LogThrottle()
        self._accept_log = LogThrottle()
        self.unread_log = LogThrottle(UNREAD_LOG_INTERVAL)
        # Connections with an unfinished frame, in the order their frames began.
        self._in_progress: dict[Connection, None] = {}
        # Kept open to be closed when accept() runs out of descriptors: with it,
        # one waiting connection can be accepted, told "busy" and closed.
        self._spare_fd: int | None = _open_spare()
        # What every connection of this listener reads into. A fresh bytes object per
        # read (anyio's receive()) is freed with the peer's cleartext still in it, to
        # be found in the heap long after; this one buffer is handed to the decoder
        # and overwritten before anything else runs (docs/threat-model.md).
        self._read_buffer = bytearray(self.read_size)
        self.connections_open = 0
        self.connections_total = 0
        self.refused = 0
        self.busy = 0
        self.timeouts = 0
        self.protocol_errors = 0
        self.protocol_errors_by_code: Counter[str] = Counter()
        self.interned_messages = 0

    def stats(self) -> ServerStats:
        """A frozen snapshot of the counters (read by logs and metrics)."""
        return ServerStats(
            connections_open=self.connections_open,
            connections_total=self.connections_total,
            refused=self.refused,
            busy=self.busy,
            timeouts=self.timeouts,
            protocol_errors=dict(self.protocol_errors_by_code),
            interned_messages=self.interned_messages,
        )

    def count_protocol_error(self, code: str) -> None:
        self.protocol_errors += 1
        self.protocol_errors_by_code[code] += 1

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def serve(self, listener: SocketListener) -> None:
        """Accept and serve until stop(); then drain open connections and return.

        May run for several listeners at once; stop() ends them all.
        """
        async with anyio.create_task_group() as connections:
            accepting = anyio.CancelScope()
            if self._stopping:
                accepting.cancel()
            self._accept_scopes.add(accepting)
            with accepting:
                await self._accept(listener, connections)
            self._accept_scopes.discard(accepting)
            await listener.aclose()
            with anyio.move_on_after(DRAIN_DEADLINE) as drain:
                while self.connections_open:
                    await anyio.sleep(0.01)
            if drain.cancelled_caught:
                log.warning(
                    "%d connections still open at shutdown; closing them", self.connections_open
                )
                connections.cancel_scope.cancel()

    async def _accept(self, listener: SocketListener, connections: anyio.abc.TaskGroup) -> None:
        """Accept until cancelled or the listener closes; no accept() error ends it."""
        backoff = ACCEPT_BACKOFF_MIN
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except anyio.BrokenResourceError as exc:
                cause = exc.__cause__
                code = cause.errno if isinstance(cause, OSError) else None
                if code in _OUT_OF_FILES and self._refuse_one(listener):
                    self._log_accept_error("out of file descriptors: refused a connection")
                    continue
                self._log_accept_error(
                    f"accept() failed: {os.strerror(code) if code else 'unknown error'}; "
                    f"retrying in {backoff:g}s"
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                continue
            backoff = ACCEPT_BACKOFF_MIN
            connections.start_soon(self._handle, stream)

    def _refuse_one(self, listener: SocketListener) -> bool:
        """Out of descriptors: use the spare one to accept, refuse and close a peer."""
        if self._spare_fd is None:
            self._spare_fd = _open_spare()
            return False
        os.close(self._spare_fd)
        self._spare_fd = None
        self.busy += 1
        try:
            peer, _ = listener.extra(SocketAttribute.raw_socket).accept()
        except OSError:
            return False
        else:
            # The peer learns from the close alone if the send fails.
            with peer, contextlib.suppress(OSError):
                peer.setblocking(False)
                peer.send(self.refusal(ERR_BUSY, TEXT_BUSY))
            return True
        finally:
            self._spare_fd = _open_spare()

    def _log_accept_error(self, text: str) -> None:
        suppressed = self._accept_log.ready()
        if suppressed is not None:
            log.warning("%s%s", text, more_since(suppressed))

    def stop(self) -> None:
        """Stop accepting; make every connection drain what it was sent, then close."""
        self._stopping = True
        for accepting in self._accept_scopes:
            accepting.cancel()
        for scope in self._receive_scopes:
            scope.cancel()
        for hook in list(self._stop_hooks):
            hook()

    def watch_stop(self, hook: Callable[[], None]) -> None:
        """Call hook at stop() (not if stop() was called already: check stopping)."""
        self._stop_hooks.add(hook)

    def unwatch_stop(self, hook: Callable[[], None]) -> None:
        self._stop_hooks.discard(hook)

    @property
    def read_buffer(self) -> bytearray:
        """What every connection of this listener reads into; whoever reads into it
        overwrites what it read before anything else runs (see __init__)."""
        return self._read_buffer

    # --- for subclasses ---------------------------------------------------------------

    async def serve_connection(self, stream: SocketStream) -> None:
        raise NotImplementedError

    def refusal(self, code: str, text: str) -> bytes:
        """What tells a refused peer why, if the protocol can; by default nothing."""
        return b""

    async def refuse(self, stream: SocketStream, code: str, text: str) -> None:
        """Tell a refused peer why, then close."""
        data = self.refusal(code, text)
        if data:
            await self.send(stream, data)

    def deadline(self, frame_started: float | None) -> float:
        """When to give up waiting: the idle timeout, or sooner inside a frame."""
        now = anyio.current_time()
        limits = self.limits
        deadline = now + limits.idle_timeout if limits.idle_timeout > 0 else math.inf
        if frame_started is not None and limits.frame_timeout > 0:
            deadline = min(deadline, frame_started + limits.frame_timeout)
        return deadline

    async def receive(
        self, stream: SocketStream, deadline: float, sink: Callable[[memoryview], None]
    ) -> int | None:
        """Hand the next bytes to sink: their count, 0 at end of stream (sink is not
        called), None when the connection should close.

        sink must copy what it keeps: the bytes it is shown are overwritten as soon
        as it returns, so no copy of a peer's cleartext is left in freed memory.
        """
        try:
            if self._stopping:
                with anyio.move_on_after(DRAIN_QUIET_TIME):
                    return await self._read(stream, sink)
                return None
            with anyio.CancelScope(deadline=deadline) as scope:
                self._receive_scopes.add(scope)
                try:
                    return await self._read(stream, sink)
                finally:
                    self._receive_scopes.discard(scope)
            if self._stopping:
                # Cancelled by stop(): nothing was consumed; drain what the peer sent.
                return await self.receive(stream, deadline, sink)
            self.timeouts += 1
            log.debug("closing a connection: idle, or a frame took too long to arrive")
            return None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return 0

    async def _read(self, stream: SocketStream, sink: Callable[[memoryview], None]) -> int:
        """One read straight from the (non-blocking) socket into the shared buffer."""
        sock = stream.extra(SocketAttribute.raw_socket)
        buffer = self._read_buffer
        await anyio.lowlevel.checkpoint()  # as anyio's receive(): others get a turn
        while True:
            try:
                count = sock.recv_into(buffer)
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            if count:
                # No await between the read and the overwrite: the buffer is shared.
                try:
                    sink(memoryview(buffer)[:count])
                finally:
                    buffer[:count] = ZEROS[:count]
            return count

    async def receive_on(
        self, connection: Connection, stream: SocketStream, sink: Callable[[memoryview], None]
    ) -> int | None:
        """receive() within connection's frame deadline; check connection.shed after it.

        Bytes that are there already are read at once, within the connection's turn
        (take_turn): a busy peer's frames cost no turn of the event loop each, and
        no cancel scope. Otherwise, or once its turn is up, receive() lets the
        others go first and waits."""
        sock = connection.sock
        if sock is None:
            sock = connection.sock = stream.extra(SocketAttribute.raw_socket)
        if not self._stopping and time.perf_counter() < connection.turn_ends:
            count = self._read_ready(connection, sock, sink)
            if count is not None:
                return count
        with anyio.CancelScope() as connection.waiting:
            count = await self.receive(stream, self.deadline(connection.clock.started), sink)
        connection.waiting = None
        connection.turn_ends = time.perf_counter() + SLICE_SECONDS  # receive() let go
        return None if connection.shed else count

    def _read_ready(
        self, connection: Connection, sock: socket.socket, sink: Callable[[memoryview], None]
    ) -> int | None:
        """_read() of bytes already there, without waiting: their count, 0 at end of
        stream (or a broken connection, as receive()), None when there are none yet
        or the frame in progress is past its timeout (receive() then closes it)."""
        started = connection.clock.started
        timeout = self.limits.frame_timeout
        if started is not None and timeout > 0 and anyio.current_time() >= started + timeout:
            return None
        buffer = self._read_buffer
        try:
            count = sock.recv_into(buffer)
        except BlockingIOError:
            return None
        except OSError:
            return 0
        if count:
            # No await between the read and the overwrite: the buffer is shared.
            try:
                sink(memoryview(buffer)[:count])
            finally:
                buffer[:count] = ZEROS[:count]
        return count

    @staticmethod
    async def take_turn(connection: Connection) -> None:
        """Let the event loop go if connection's turn is up (Connection.turn_ends),
        and start its next one."""
        if time.perf_counter() >= connection.turn_ends:
            await anyio.lowlevel.checkpoint()
            connection.turn_ends = time.perf_counter() + SLICE_SECONDS

    def track(
        self, connection: Connection, in_progress: bool, finished: int, now: float | None = None
    ) -> None:
        """After each read: is a frame unfinished, and how many has it finished so far.

        Each step is one dict operation, so the policy thread may call it while the
        event loop's thread looks at oldest_frame() (see policy_loop.py)."""
        if connection.shed:
            return
        clock = connection.clock
        started = clock.started
        clock.update(in_progress, finished, now)
        if clock.started != started:  # a frame ended, or a new one began
            self._in_progress.pop(connection, None)
            if clock.started is not None:
                self._in_progress[connection] = None  # last: the newest frame

    def forget(self, connection: Connection) -> None:
        """The connection is closing."""
        self._in_progress.pop(connection, None)

    def shed(self, connection: Connection) -> None:
        """Make a connection close (with "busy" where the protocol can say so)."""
        self._in_progress.pop(connection, None)
        connection.shed = True
        if connection.waiting is not None:
            connection.waiting.cancel()
        self.busy += 1

    def oldest_frame(self) -> Connection | None:
        """The connection whose unfinished frame began first, if any."""
        return next(iter(self._in_progress), None)

    async def send(self, stream: SocketStream, data: bytes) -> None:
        """Send, or raise ConnectionClosed when the peer is gone or does not read in time."""
        with anyio.move_on_after(SEND_TIMEOUT):
            try:
                await stream.send(data)
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                raise ConnectionClosed from None
        self.timeouts += 1
        log_unread(self.unread_log)
        raise ConnectionClosed

    # --- one connection -----------------------------------------------------------------

    async def _handle(self, stream: SocketStream) -> None:
        self.connections_open += 1
        self.connections_total += 1
        try:
            async with stream:
                refusal = self._refusal(stream)
                if refusal is None:
                    await self.serve_connection(stream)
                else:
                    await self.refuse(stream, *refusal)
        except ConnectionClosed:
            pass
        finally:
            self.connections_open -= 1

    def _refusal(self, stream: SocketStream) -> tuple[str, str] | None:
        """Why this connection may not be served (code, text), or None."""
        allow = self.allow
        if allow.restricted:
            peer = peer_credentials(stream.extra(SocketAttribute.raw_socket))
            if not allow.permits(peer):
                self.refused += 1
                suppressed = self._refused_log.ready()
                if suppressed is not None:
                    who = (
                        f"uid {peer.uid} gid {peer.gid} pid {peer.pid}" if peer else "unknown peer"
                    )
                    log.warning(
                        "refused a connection from %s: not in the allow-lists%s",
                        who,
                        more_since(suppressed),
                    )
                return (ERR_FORBIDDEN, "this user or group may not use trackerd")
        if self.connections_open > self.limits.max_connections:
            if self._shed_a_slow_frame():
                return None
            self.busy += 1
            suppressed = self._busy_log.ready()
            if suppressed is not None:
                log.warning(
                    "at the limit of %d connections: turned one away%s",
                    self.limits.max_connections,
                    more_since(suppressed),
                )
            return (ERR_BUSY, TEXT_BUSY)
        return None

    def _shed_a_slow_frame(self) -> bool:
        """At the limit: close the connection that has trickled a frame longest, if any."""
        oldest = self.oldest_frame()
        if oldest is None or oldest.clock.started is None:
            return False
        timeout = self.limits.frame_timeout
        least = min(SHED_AFTER, timeout / 2) if timeout > 0 else SHED_AFTER
        if anyio.current_time() - oldest.clock.started < least:
            return False
        self.shed(oldest)
        suppressed = self._busy_log.ready()
        if suppressed is not None:
            log.warning(
                "at the limit of %d connections: closed the one whose frame began first "
                "to serve a new one%s",
                self.limits.max_connections,
                more_since(suppressed),
            )
        return True


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def log_unread(throttle: LogThrottle) -> None:
    """The line for a connection closed because its peer did not read its reply in
    SEND_TIMEOUT: at most one per throttle interval, with how many came since the
    last (every listener's, the policy loop's too)."""
    suppressed = throttle.ready()
    if suppressed is not None:
        log.info(
            "closing a connection that did not read its reply within %.0fs%s",
            SEND_TIMEOUT,
            more_since(suppressed),
        )
