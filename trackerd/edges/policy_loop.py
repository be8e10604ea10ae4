"""The Postfix policy listener's own thread: one epoll, its connections, no asyncio.

Postfix asks one request at a time on each connection, so every request is a
wake-up, and through asyncio each wake-up costs its selector wrapper, Handle
objects and transport callbacks (docs/performance.md). Here a dedicated thread
runs a level-triggered ``select.epoll`` over the admitted connections'
non-blocking sockets: each read is one ``recv_into`` into the thread's buffer,
handed to the connection's Session (policy_server.py), which parses and answers
with one ``send``; every ready connection of a wake is handled before the next
``epoll_wait``. Accepting and admission stay in the event loop (StreamServer),
which hands each admitted socket over (PolicyLoop.adopt) and waits for it to
close, so the connection counts, the limit and the drain cap are StreamServer's.

The Tracker is the event loop's alone: the Session's pairs go into a Handover,
which the event loop takes in batches (one wake-up of the loop per batch) and
before every status snapshot, so a status reply reflects every request answered
before it. While MAX_QUEUED pairs wait, the thread reads no socket (nothing is
dropped: the peers wait in their sockets' buffers).

What StreamServer promises for a stream holds here too: the idle and frame timeouts
are one deadline per connection, moved only when it comes sooner (the thread checks
them when the earliest is due, and again on each connection when its own fires); a
reply the peer does not take whole stops reading from it and gives it SEND_TIMEOUT
to take it (a connection shed at the limit closes at once, its unsent replies
dropped, so that it does not keep the slot); at stop() each connection drains until
quiet for DRAIN_QUIET_TIME; a Session handles a capped number of requests per call
(backlog) and goes on in a later turn, after the other ready connections; the read
buffer is overwritten as soon as the Session copied it; an error in one connection
is logged by type and place (session.log_failure) and aborts it alone. The loop's
thread talks to this one only through commands (PolicyLoop.call) and an eventfd that
wakes it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from servertracker import accel
from trackerd.core.policy_protocol import (
    DUNNO_RESPONSE,
    MAX_ATTRIBUTES,
    MAX_LINE,
    USED_ATTRIBUTES,
)
from trackerd.edges import stream_server
from trackerd.edges.access import LogThrottle
from trackerd.edges.msgpack_server import MAX_SLICE, MIN_SLICE, SLICE_SECONDS
from trackerd.edges.session import Session, log_failure
from trackerd.edges.stream_server import READ_SIZE, ZEROS, Connection, StreamServer

if TYPE_CHECKING:
    from trackerd.edges._cpolicy_loop import Loop

log = logging.getLogger(__name__)

monotonic = time.monotonic

#: Pairs waiting for the event loop past which the thread reads no socket until
#: the loop has counted every one queued (back-pressure; one turn's requests may
#: pass it).
MAX_QUEUED = 4096
#: The event loop is woken to count the pairs when this many wait ...
BATCH = 256
#: ... or when the oldest has waited this long, in seconds. A status request or
#: status file write counts them at once, whatever their number. Larger batches
#: cost the Tracker less a pair (numpy) and wake the loop less often. The loop
#: counts them in slices of SLICE_SECONDS at most, as the msgpack server counts
#: a large frame, with the loop let go in between.
HANDOVER_DELAY = 0.02
#: How long an exiting thread is waited for, in seconds.
JOIN_TIMEOUT = 5.0
#: Out of memory, pairs the C loop handed back wait in the thread (nothing else is
#: read) and the hand-over tries to take them again this often, in seconds.
HELD_RETRY = 0.1

#: Tracker.record_columns(conn_ips, senders, deadline): how many pairs it counted.
Record = Callable[[Sequence[str | None], Sequence[str | None], float], int]

_IN, _OUT, _HUP, _ERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP, select.EPOLLERR

#: The C twin of the thread's common case (edges/_cpolicy_loop.c): the waits, and
#: each ready connection whose read is one whole request, read, parsed, queued and
#: answered without the interpreter lock, the queue handed back in batches; or
#: None: the Python code below does all.
EXTENSION = "trackerd.edges._cpolicy_loop"
_cpolicy_loop = accel.load(EXTENSION)
#: Descriptors the C loop may serve the short way: one byte each (1: yes), by
#: number; a descriptor past the end always goes the Python way.
SHORT_WAY_FDS = 1 << 16
#: The C loop's answer to every request it serves: a connection whose session
#: answers otherwise is not marked for it.
SHORT_REPLY = DUNNO_RESPONSE


class Handover:
    """Pairs from the policy thread to the event loop's thread, in batches.

    The thread put()s, and asks for a flush (call_soon_threadsafe) once per batch.
    The loop's flush() counts the oldest pairs for SLICE_SECONDS at most (the
    Tracker's deadline), and goes on in its next turn until none is left: costly
    values (255-character senders, say) cannot hold the loop for the whole queue.
    settle(), before a status snapshot, counts every pair queued by then.

    The pairs wait as two columns, the form record_columns() takes, so that a
    slice is two list slices and no Python code runs per pair. The thread appends
    at the end (the connection IP first, then the sender: a pair is complete once
    its sender is there), the loop alone removes from the front, and only pairs
    complete when the slice begins (len of the senders): each step on the shared
    lists is one operation under the interpreter lock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, record: Record) -> None:
        self._loop = loop
        self._record = record
        self._conn_ips: list[str | None] = []
        self._senders: list[str | None] = []
        # The thread's: when the oldest pair not yet asked for was queued.
        self._since: float | None = None
        # A flush is scheduled in the loop and has not begun.
        self._asked = False
        # The loop's: flush() goes on in the loop's next turn.
        self._going_on = False
        # The loop's: pairs taken for the next slice; follows what the last one did
        # (as msgpack_server's), so that a slice looks up few pairs it cannot reach.
        self._size = MAX_SLICE
        #: The loop's: pairs counted since the start.
        self.counted = 0
        #: The thread waits for the queue to be empty: the slice that empties it
        #: wakes the thread (set by PolicyLoop).
        self.want_room = False
        self.wake_thread: Callable[[], None] = lambda: None
        #: Has the thread queue here the pairs its C loop holds (set by PolicyLoop).
        self.collect: Callable[[], Awaitable[None]] = _nothing

    def put(self, conn_ip: str | None, sender: str | None) -> None:
        """The thread's: queue one pair to record; all or nothing (MemoryError)."""
        self._conn_ips.append(conn_ip)
        try:
            self._senders.append(sender)  # last: the pair is complete
        except MemoryError:
            del self._conn_ips[-1]  # else every later pair would be misaligned
            raise
        if self._since is None:
            self._since = monotonic()

    def put_many(self, conn_ips: list[str | None], senders: list[str | None], since: float) -> None:
        """The thread's: queue the pairs the C loop queued, the oldest at since; all
        or nothing (MemoryError: the caller still holds them)."""
        before = len(self._conn_ips)
        self._conn_ips += conn_ips
        try:
            self._senders += senders  # last: the pairs are complete
        except MemoryError:
            del self._conn_ips[before:]  # shrinking allocates nothing
            raise
        if self._since is None or since < self._since:
            self._since = since

    @property
    def queued(self) -> int:
        return len(self._senders)

    @property
    def full(self) -> bool:
        return len(self._senders) >= MAX_QUEUED

    @property
    def waiting(self) -> bool:
        """Whether any pair waits to be counted."""
        return bool(self._senders)

    def hand_over(self, now: float, force: bool = False) -> float:
        """The thread's: ask the loop for a flush if one is due; the seconds until
        the next is due (inf: nothing waits)."""
        since = self._since
        if since is None:
            return math.inf
        if force or now - since >= HANDOVER_DELAY or len(self._senders) >= BATCH:
            self._since = None
            if not self._asked:
                self._asked = True
                # RuntimeError: the loop is closed, the daemon has ended.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self.flush)
            return math.inf
        return since + HANDOVER_DELAY - now

    def flush(self) -> None:
        """The event loop's, asked by the thread: count a slice now, the rest in
        the loop's next turns."""
        self._asked = False  # first: a pair queued from now on asks again
        if not self._going_on:
            self._go_on()

    def _go_on(self) -> None:
        self._going_on = False
        self.count_slice()
        if self._senders:
            self._going_on = True
            self._loop.call_soon(self._go_on)

    async def settle(self) -> None:
        """The event loop's, before a status snapshot: count every pair queued by
        now (so every request answered before it), a slice at a time, the loop let
        go in between. Pairs queued meanwhile wait for flush()."""
        await self.collect()  # the C loop's: answered, so counted now
        target = self.counted + len(self._senders)
        while self.counted < target:
            self.count_slice()
            if self.counted < target:
                await anyio.lowlevel.checkpoint()

    def count_slice(self) -> None:
        """The event loop's: count the oldest pairs, for SLICE_SECONDS at most (one
        pair at least); the thread reads again once none is left."""
        conn_ips, senders = self._conn_ips, self._senders
        take = min(self._size, len(senders))  # complete pairs only
        if take:
            done = self._record(
                conn_ips[:take], senders[:take], time.perf_counter() + SLICE_SECONDS
            )
            del conn_ips[:done]
            del senders[:done]  # the rest stays first, in its order
            self.counted += done
            if done < take:
                self._size = max(MIN_SLICE, 2 * done)
            elif take == self._size:
                self._size = min(MAX_SLICE, 2 * take)
        # After the queue is seen empty: a thread that wants room from now on sees
        # it empty too (PolicyLoop._wait_for_room).
        if self.want_room and not senders:
            self.want_room = False
            self.wake_thread()


class PolicyLoop:
    """The thread that serves the policy listener's admitted connections."""

    def __init__(self, server: StreamServer, handover: Handover) -> None:
        self.server = server
        self.handover = handover
        self.poller = select.epoll()
        self._waker = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.poller.register(self._waker, _IN)
        # What the thread waits on while the queue is full: commands and room only.
        self._room = select.epoll()
        self._room.register(self._waker, _IN)
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self.connections: dict[int, ThreadConnection] = {}
        #: Connections whose Session stopped at its cap: they go on next turn.
        self.turns: list[ThreadConnection] = []
        self._next_timer = math.inf
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)
        #: short_way[fd]: 1 while that connection may be served by the C loop.
        self.short_way = bytearray(SHORT_WAY_FDS)
        self._c: Loop | None = (
            None
            if _cpolicy_loop is None
            else _cpolicy_loop.Loop(
                self.poller.fileno(),
                tuple(name.encode("ascii") for name in USED_ATTRIBUTES),
                MAX_LINE,
                MAX_ATTRIBUTES,
                self.buffer,
                self.short_way,
                SHORT_REPLY,
                HANDOVER_DELAY,
            )
        )
        self.draining = False
        #: One line a second at most for peers that do not read their replies.
        self.unread_log = LogThrottle(stream_server.UNREAD_LOG_INTERVAL)
        #: One line a second at most while memory is short for the hand-over.
        self._held_log = LogThrottle(stream_server.UNREAD_LOG_INTERVAL)
        self._exit = False
        self._thread = threading.Thread(target=self._run, name="trackerd-policy", daemon=True)
        handover.wake_thread = self.wake
        # _collect()'s: the thread has ended (its waker is closed); the answers due.
        self._ending = threading.Lock()
        self._ended = False
        self._collecting: set[Callable[[], None]] = set()
        if self._c is not None:
            handover.collect = self._collect
        # Pairs the C loop handed back that the hand-over could not take (no
        # memory): queued before anything else is served (_turn).
        self._held: tuple[list[str | None], list[str | None], float] | None = None

    # --- the event loop's calls --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        os.eventfd_write(self._waker, 1)

    def call(self, command: Callable[[], None]) -> None:
        """Run command in the thread, soon."""
        self._commands.append(command)
        self.wake()

    async def _collect(self) -> None:
        """Return once the thread has queued in the hand-over every pair its C loop
        held when called: the thread does so after each serve() (before it runs
        commands), and a command ends the C loop's wait."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def answer() -> None:
            with self._ending:
                self._collecting.discard(answer)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_resolve, done)

        with self._ending:
            if self._ended:
                return  # it queued them all before it ended
            self._collecting.add(answer)
            self.call(answer)
        await asyncio.shield(done)

    def adopt(self, sock: socket.socket, session: Session, done: Callable[[], None]) -> Handle:
        """Serve an admitted socket with session; done() is called (in the thread)
        once it is closed and the session has dealt with what it held."""
        handle = Handle(self)

        def begin() -> None:
            handle.connection = ThreadConnection(self, sock, session, done)
            handle.connection.start(monotonic())
            if handle.aborted:
                handle.connection.lost()

        self.call(begin)
        return handle

    def drain_all(self) -> None:
        """The daemon is stopping: every connection drains until quiet, then closes."""

        def drain() -> None:
            self.draining = True
            now = monotonic()
            for connection in list(self.connections.values()):
                connection.drain(now)

        self.call(drain)

    async def close(self) -> None:
        """End the thread: what is still open is aborted (its sessions record what
        they hold), then the thread is waited for."""

        def finish() -> None:
            for connection in list(self.connections.values()):
                connection.lost()
            self._exit = True

        self.call(finish)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._thread.join, JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.warning("the policy thread did not end in %.0fs; exiting anyway", JOIN_TIMEOUT)

    # --- the thread's ------------------------------------------------------------------

    def arm(self, deadline: float) -> None:
        if deadline < self._next_timer:
            self._next_timer = deadline

    def _run(self) -> None:
        try:
            while not self._exit:
                try:
                    self._turn()
                except Exception as exc:  # a bug: logged, and the thread goes on
                    log_failure(exc)
        finally:
            if not self._queue_held():
                _, senders, _ = self._held or ((), (), 0.0)
                log.error(
                    "out of memory: %d answered policy requests not counted at exit",
                    len(senders),
                )
            with self._ending:  # what the C loop held is queued: collects may end
                self._ended = True
                collecting, self._collecting = self._collecting, set()
            for answer in collecting:
                answer()
            self.poller.close()
            self._room.close()
            os.close(self._waker)

    def _queue_held(self) -> bool:
        """Queue in the hand-over the pairs the C loop handed back; if memory runs
        out, keep them (their requests are answered: they must be counted) for the
        next turn. Whether none is held now."""
        held = self._held
        if held is None:
            return True
        try:
            self.handover.put_many(*held)
        except MemoryError:
            if self._held_log.ready() is not None:
                log.warning(
                    "out of memory: %d answered policy requests wait to be counted; "
                    "reading paused until they are",
                    len(held[1]),
                )
            return False
        self._held = None
        return True

    def _turn(self) -> None:
        if not self._queue_held():
            # Nothing more is read meanwhile; commands still run (a status waits, and
            # is answered without them if memory stays short).
            if self._room.poll(HELD_RETRY):
                self._run_commands()
            return
        now = monotonic()
        handover = self.handover
        wait = min(handover.hand_over(now), self._next_timer - now)
        if handover.full or handover.want_room:
            self._wait_for_room(now)
            return
        if self.turns:
            wait = 0.0
        connections = self.connections
        if self._c is None:
            events = self.poller.poll(max(wait, 0.0) if wait < math.inf else -1)
            now = monotonic()
        else:
            # epoll_wait's milliseconds, rounded up as select.epoll.poll() does; the C
            # loop serves whole requests until it needs this code or BATCH pairs wait.
            served, events, pending, troubles, pairs = self._c.serve(
                math.ceil(max(wait, 0.0) * 1000) if wait < math.inf else -1,
                BATCH - handover.queued,
            )
            now = monotonic()
            if pairs is not None:  # first: before any command (_collect) runs
                self._held = pairs
                self._queue_held()  # else held for the next turn, nothing lost
            for fd, count, last_read in served:
                connections[fd].served(count, last_read)
            for fd, sent in troubles:
                connections[fd].sent_short(sent)
            if pending is not None:
                fd, offset, count = pending
                connections[fd].read(offset, count, now)
        for fd, mask in events:
            connection = connections.get(fd)
            if connection is not None:
                connection.ready(mask, now)
            elif fd == self._waker:
                self._run_commands()
        if self.turns:
            turns, self.turns = self.turns, []
            for connection in turns:
                connection.go_on(now)
        if now >= self._next_timer:
            self._timers(now)

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._waker)
        # A status snapshot's command counts on every answered pair being queued:
        # held ones too, if memory allows now.
        self._queue_held()
        commands = self._commands
        while commands:
            try:
                commands.popleft()()
            except Exception as exc:
                log_failure(exc)

    def _wait_for_room(self, now: float) -> None:
        """Read no socket until the event loop has counted every pair queued (or a
        command comes)."""
        handover = self.handover
        if not handover.want_room:
            handover.want_room = True
            log.debug("the event loop is behind: reading paused until it takes the requests")
        # Checked after want_room is set: the slice that empties the queue wakes us.
        if handover.waiting:
            handover.hand_over(now, force=True)
            if self._room.poll(1.0):
                self._run_commands()
        else:
            handover.want_room = False

    def _timers(self, now: float) -> None:
        """Fire the deadlines that are due; the next check at the earliest left."""
        self._next_timer = math.inf
        for connection in list(self.connections.values()):
            if connection.timer_at <= now:
                connection.on_timer(now)
            if connection.send_at <= now:
                connection.reply_not_read()
            self.arm(min(connection.timer_at, connection.send_at))


class Handle:
    """The event loop's hold on one adopted connection: shed or abort it."""

    __slots__ = ("_loop", "aborted", "connection")

    def __init__(self, loop: PolicyLoop) -> None:
        self._loop = loop
        self.connection: ThreadConnection | None = None
        self.aborted = False

    def abort(self) -> None:
        """Close at once, replies unsent (the drain's cap); the session records what it holds."""
        self.aborted = True

        def abort() -> None:
            if self.connection is not None:
                self.connection.lost()

        self._loop.call(abort)


class ThreadConnection:
    """One connection on the policy thread: reads, replies, timers, drain."""

    def __init__(
        self, loop: PolicyLoop, sock: socket.socket, session: Session, done: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._server = loop.server
        self._sock = sock
        self._fd = sock.fileno()
        self._session = session
        self._done = done
        self.connection = Connection()
        self.connection.waiting = self  # StreamServer.shed() calls cancel()
        self._out = bytearray()  # replies the peer has not taken yet
        self._events = 0
        self._last_read = monotonic()
        self._draining = False
        # Closed by the daemon (timeout, shed, drain, malformed request): not timed
        # out, nor counted, again.
        self._closed_here = False
        self._closing = False  # closes once the replies are sent
        self._broken = False  # a send failed: the peer is gone
        self._lost = False
        self._in_turns = False
        #: The idle/frame/drain deadline and the unread-reply one (inf: not set).
        self.timer_at = math.inf
        self.send_at = math.inf
        session.write = self._write

    def start(self, now: float) -> None:
        c = self._loop._c
        if c is not None and self._fd < SHORT_WAY_FDS:
            # The C loop's memory of this connection's instances, which the session's
            # Python way shares (the descriptor's number may have served another).
            c.open(self._fd)
            self._session.served_by_c(functools.partial(c.first, self._fd))
        self._loop.connections[self._fd] = self
        self._loop.poller.register(self._fd, _IN)
        self._events = _IN
        if self._server.stopping or self._loop.draining:
            self.drain(now)
        else:
            self._arm()
            self._short_way()

    # --- the loop's calls ----------------------------------------------------------------

    def ready(self, mask: int, now: float) -> None:
        try:
            if mask & _OUT and self._out:
                self._writable(now)
            elif mask & _IN and self._events & _IN:
                self._readable(now)
            elif mask & (_HUP | _ERR):
                self.lost()  # gone while nothing was read: what it holds is recorded
                return
            self._settle()
        except Exception as exc:  # any bug: this connection, not the daemon
            self.failed(exc)

    def go_on(self, now: float) -> None:
        """Requests held past the cap of one call: their turn."""
        self._in_turns = False
        if self._lost or self._closing or self._session.paused:
            return  # closed; or a reply waits: _writable() goes on
        try:
            self._handled(self._session.resume(), now)
            self._settle()
        except Exception as exc:
            self.failed(exc)

    def _settle(self) -> None:
        """After a step: a broken connection is lost, else its events follow its state."""
        if self._broken:
            self.lost()
        else:
            self._update_events()

    # --- the C loop's short way ---------------------------------------------------------

    def _short_way(self) -> None:
        """Mark whether the C loop may serve this connection: only while it waits for
        a request with nothing held, nothing to send, not draining (so a read that
        is one whole request needs nothing of the rest of this class but served())."""
        fd = self._fd
        if fd < SHORT_WAY_FDS:
            self._loop.short_way[fd] = (
                self._events == _IN
                and not (self._draining or self._lost or self._closing)
                and self._session.short_reply == SHORT_REPLY
                and not self._session.in_progress()
            )

    def served(self, count: int, last_read: float) -> None:
        """The C loop served count whole requests (recorded and answered), the last
        read at last_read. (Nothing else changes: the connection was idle and stays so.)"""
        self._last_read = last_read
        try:
            self._session.served(count)
        except Exception as exc:
            self.failed(exc)

    def sent_short(self, sent: int) -> None:
        """The C loop's send of the last reply did not take it whole: sent bytes, or
        -errno (and the C loop no longer serves this connection)."""
        try:
            if sent < 0:
                self._broken = True
            else:
                reply = self._session.short_reply
                assert reply is not None  # marked for the short way only with one
                self._sent(reply, sent)
            self._settle()
        except Exception as exc:
            self.failed(exc)

    def read(self, offset: int, count: int, now: float) -> None:
        """The C loop read buffer[offset:offset + count] (0: the peer closed) and it was
        not one whole request: the Python way, as ready() after a read."""
        try:
            self._received(offset, count, now)
            self._settle()
        except Exception as exc:
            self.failed(exc)

    # --- reading and writing -------------------------------------------------------------

    def _readable(self, now: float) -> None:
        try:
            count = self._sock.recv_into(self._loop.buffer)
        except BlockingIOError:
            return
        except OSError:
            self._broken = True  # reset by the peer
            return
        self._received(0, count, now)

    def _received(self, offset: int, count: int, now: float) -> None:
        if not count:
            self._session.ended()
            self._finish()  # once the replies are sent
            return
        loop = self._loop
        try:
            # Nothing else runs between the read and the overwrite.
            keep = self._session.received(loop.view[offset : offset + count])
        finally:
            loop.buffer[offset : offset + count] = ZEROS[:count]
        self._last_read = now
        self._handled(keep, now)

    def _handled(self, keep: bool, now: float) -> None:
        """After the session handled input: close, or track its request in progress."""
        if not keep:
            self._close()
            return
        session = self._session
        if session.backlog and not self._in_turns:
            self._in_turns = True
            self._loop.turns.append(self)
        connection = self.connection
        if connection.shed:
            return
        # Between requests, as after most reads, there is nothing to track.
        if connection.clock.started is not None or session.in_progress():
            self._server.track(connection, session.in_progress(), session.finished(), now)
            if connection.clock.started is not None:
                self._arm()  # a request began: its deadline may come before the idle one
        if self._draining:
            self._arm()

    def _write(self, data: bytes) -> None:
        """The session's write: send now; what the peer does not take waits, and
        then reading stops and the send timeout runs."""
        if self._out or self._broken:
            self._out += data
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._broken = True
            return
        self._sent(data, sent)

    def _sent(self, data: bytes, sent: int) -> None:
        """After a send of data with nothing waiting before it: keep what the peer
        did not take, and stop reading until it does."""
        if sent < len(data):
            self._out += data[sent:]
            self._session.paused = True
            log.debug("a peer has not read its replies yet: reading from it paused")
            self.send_at = monotonic() + stream_server.SEND_TIMEOUT
            self._loop.arm(self.send_at)

    def _writable(self, now: float) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self._broken = True
            return
        del self._out[:sent]
        if self._out:
            return
        self.send_at = math.inf
        if self._closing:
            self.lost()  # a close waited for its replies
            return
        self._session.paused = False
        self._handled(self._session.resume(), now)

    def _update_events(self) -> None:
        """Wait for what the state needs: room to send, else data unless held back."""
        if self._lost:
            return
        session = self._session
        if self._out:
            events = _OUT
        elif self._closing or session.paused or session.backlog:
            events = 0
        else:
            events = _IN
        if events != self._events:
            self._loop.poller.modify(self._fd, events)
            self._events = events
        self._short_way()

    # --- closing -------------------------------------------------------------------------

    def cancel(self) -> None:
        """Shed by StreamServer (the event loop's thread): close at once."""
        self._loop.call(self._shed)

    def _shed(self) -> None:
        """Its slot goes to a newcomer now: the replies the peer has not taken are
        dropped (waiting SEND_TIMEOUT for them would keep the slot); the requests
        read and not answered are still recorded (session.closed())."""
        self._closed_here = True
        if self._out:
            log.debug("shed: dropping %d bytes of replies not read", len(self._out))
            self._out.clear()
        self.lost()

    def _close(self) -> None:
        """Closed by the daemon: the replies already written are sent first (within
        SEND_TIMEOUT)."""
        self._closed_here = True
        self._finish()

    def _finish(self) -> None:
        if self._lost:
            return
        self._closing = True
        if not self._out:
            self.lost()
        else:
            self._update_events()

    def lost(self) -> None:
        """The connection is gone, or being aborted: let the session record and
        overwrite what it holds, close the socket, tell the event loop. Once; never raises."""
        if self._lost:
            return
        self._lost = True
        self.timer_at = self.send_at = math.inf
        self._short_way()  # off: the descriptor's number is free once closed
        try:
            self._loop.connections.pop(self._fd, None)
            self._server.forget(self.connection)
            self._session.closed()
        except Exception as exc:  # see ready()
            log_failure(exc)
        finally:
            c = self._loop._c
            if c is not None and self._fd < SHORT_WAY_FDS:
                c.close(self._fd)  # after closed(): the session's last use of it
            with contextlib.suppress(OSError):
                self._loop.poller.unregister(self._fd)
            self._sock.close()
            self._out.clear()
            self._done()

    def failed(self, exc: Exception) -> None:
        """An unexpected error in this connection's handling: log it, abort the connection."""
        log_failure(exc)
        self.lost()

    # --- timers --------------------------------------------------------------------------

    def drain(self, now: float) -> None:
        """The daemon is stopping: read until quiet, then close."""
        self._draining = True
        self._last_read = now
        self._arm()
        self._short_way()

    def _deadline(self) -> float:
        if self._draining:
            return self._last_read + stream_server.DRAIN_QUIET_TIME
        limits = self._server.limits
        idle = limits.idle_timeout
        deadline = self._last_read + idle if idle > 0 else math.inf
        started = self.connection.clock.started
        if started is not None and limits.frame_timeout > 0:
            deadline = min(deadline, started + limits.frame_timeout)
        return deadline

    def _arm(self) -> None:
        """Make the timer fire by the earliest deadline (a later one waits for it)."""
        if self._closed_here or self._lost:
            return
        deadline = self._deadline()
        if deadline < self.timer_at:
            self.timer_at = deadline
            self._loop.arm(deadline)

    def on_timer(self, now: float) -> None:
        self.timer_at = math.inf
        if self._closed_here or self._lost:
            return  # closed already (shed, say): nothing to time out, nothing to count
        if now < self._deadline():
            self._arm()  # data came meanwhile: the deadline moved
            return
        if self._draining:
            log.debug("drained: closing a connection that is quiet")
        else:
            self._server.timeouts += 1
            log.debug("closing a connection: idle, or a frame took too long to arrive")
        self._close()

    def reply_not_read(self) -> None:
        self.send_at = math.inf
        if self._closed_here:
            # Closed already, and counted if it timed out: its replies are dropped now.
            log.debug("dropping the replies a closed connection did not read")
        else:
            self._server.timeouts += 1
            stream_server.log_unread(self._loop.unread_log)
        self.lost()


async def _nothing() -> None:
    pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
