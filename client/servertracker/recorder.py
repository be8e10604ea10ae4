"""The fork-safe, non-blocking recorder that SMTP worker processes use.

``Client.record_server()`` only appends to a bounded in-memory queue
(record_queue.py, in C when built): it never blocks and never raises. A
background thread batches the queue into record frames (batch_encoder.py:
`interned`, `columns` or `record`, as the daemon takes them) and writes them to
trackerd, reconnecting with backoff whenever the daemon is down or restarts.
Past the bound, records are dropped and counted.
A batch is written whole or, after a failed write, the records of its frames
not written whole are encoded again for the next connection.

Fork safety: ``os.register_at_fork`` resets a child's copy of every client, so
records queued in the parent are sent once (by the parent), the child never
touches the parent's socket, and the child starts its own thread and
connection on its first record.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import operator
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from servertracker import protocol
from servertracker._log import log
from servertracker.batch_encoder import (
    DEFAULT_TABLE_ENTRIES,
    BatchEncoder,
    GrantDeclined,
    OlderDaemon,
    handshake,
    load_value_tables,
)
from servertracker.errors import LocalProtocolError
from servertracker.hash_keys import hash_is_secret
from servertracker.paths import not_a_socket, resolve_socket_path
from servertracker.reachability import DropWarning, Refused, UnreachableWarning, drop_text
from servertracker.record_queue import LONG_VALUE, new_queue
from servertracker.value_cut import clean as _clean
from servertracker.value_cut import cut

DEFAULT_MAX_BUFFERED = 100_000
DEFAULT_BATCH_SIZE = 512
DEFAULT_FLUSH_INTERVAL = 0.1
DEFAULT_EXIT_TIMEOUT = 1.0
#: The long-value budget's default (record_queue.py).
DEFAULT_MAX_LONG_CHARS = 256 * 1024
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 1.0
_SEND_TIMEOUT = 0.5
#: Between two batches of a backlog (once it has held the GIL _LONG_HOLD), and
#: after a send the socket took only part of, the flusher sleeps this long
#: without the GIL. A send lets go of the GIL,
#: but for a few microseconds only: the flusher took it back before the worker's
#: thread, woken for it, could run, and so held it batch after batch for up to
#: the 5 ms switch interval (traced with perf sched: docs/performance.md).
_PAUSE = 0.0001
#: The flusher pauses (_PAUSE) at the next step of a batch's encoding once it has
#: held the GIL this long (seconds). The worker's thread, when it wants the GIL,
#: then waits that long plus one step (a few array operations). Only a sleep hands
#: the GIL over: numpy lets go of it in each call, but the flusher takes it back
#: before the woken thread can, and a forced switch comes after 5 ms at the
#: soonest (docs/performance.md, "record_server() latency, daemon up"). Not while
#: a thread waits in record_many() or flush(): it waits for the flusher, and the
#: pauses made a bulk import take 1.6 times as long.
_LONG_HOLD = 0.0002

_clients: weakref.WeakSet[Client] = weakref.WeakSet()


@dataclass(frozen=True)
class ClientStats:
    """What happened to the records of this process."""

    recorded: int  # calls that queued a record
    sent: int  # records written to trackerd's socket
    buffered: int  # records waiting to be sent
    dropped: int  # records lost because the queue was full
    #: Connections set up after the first (one closed in its handshake, after too
    #: small a grant, and replaced at once is not one: it carried no record).
    reconnects: int
    connected: bool
    #: The record message this connection sends: "interned", "columns" or
    #: "record" ("" before the first connection).
    message: str = ""
    #: Ids of each value table the daemon granted this connection (0: none).
    table_entries: int = 0


def _whole(name: str, value: object, low: int, high: int | None = None) -> int:
    """A Client parameter that counts something: an int (not a bool) in low..high."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not a bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if number < low or (high is not None and number > high):
        bounds = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
        raise ValueError(f"{name} must be {bounds}, not {number:,}")
    return number


def _seconds(name: str, value: object, *, zero: bool) -> float:
    """A Client parameter in seconds: a finite number, > 0 (or >= 0 when zero is allowed)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bounds = "a finite number >= 0" if zero else "a finite number > 0"
        raise ValueError(f"{name} must be {bounds}, not {seconds!r}")
    return seconds


class Client:
    """A recorder bound to one trackerd socket. Thread-safe and fork-safe."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        batch_size: int | None = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
        max_long_chars: int = DEFAULT_MAX_LONG_CHARS,
        table_entries: int = DEFAULT_TABLE_ENTRIES,
        _load_tables: bool = True,
    ) -> None:
        """``socket_path`` defaults to trackerd's, resolved as the daemon does.

        ``table_entries``: the ids to ask for in each of the connection's two
        value tables (0 to 1,048,576; 0 sends no interned messages, and so does
        an interpreter whose hash() is not secret: hash_keys.hash_is_secret).
        Each id takes 56 bytes in this process (value_tables.py: four slots of a
        key and an id, and the id's key), allocated on connecting, so
        the default (16,384) costs about 1.8 MB for the two. A client that will ask
        for tables loads numpy here (about 0.2 s, once a process; in the
        background thread it stalled the recording thread for ms at a time):
        build it before forking, and the workers inherit numpy loaded.

        The other bounds: ``max_buffered`` at least 1, ``max_long_chars`` at
        least 0, ``batch_size`` 1 to 65,536 (None: 512, or 2,048 on a connection
        that sends interned), ``flush_interval`` seconds > 0, ``exit_timeout``
        seconds >= 0. A value out of range raises ValueError, one of the wrong
        type (a float or a bool for a count) TypeError, naming it.
        """
        # Checked here, once: a wrong value would otherwise fail far from its
        # cause (the daemon refusing every intern request, a queue that drops
        # every record, a flusher spinning on a zero wait).
        table_entries = _whole("table_entries", table_entries, 0, protocol.MAX_INTERN_ENTRIES)
        max_buffered = _whole("max_buffered", max_buffered, 1)
        max_long_chars = _whole("max_long_chars", max_long_chars, 0)
        if batch_size is not None:
            batch_size = _whole("batch_size", batch_size, 1, protocol.MAX_PAIRS_PER_MESSAGE)
        flush_interval = _seconds("flush_interval", flush_interval, zero=False)
        exit_timeout = _seconds("exit_timeout", exit_timeout, zero=True)
        self.socket_path = os.fspath(resolve_socket_path(socket_path))
        self._table_entries = table_entries if hash_is_secret() else 0
        self._max_buffered = max_buffered
        self._max_long_chars = max_long_chars
        # None: DEFAULT_BATCH_SIZE, or INTERNED_BATCH_SIZE on a connection that
        # sends interned (set on connecting: BatchEncoder.batch_size).
        self._batch_asked = batch_size
        self._batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        self._flush_interval = flush_interval
        self._exit_timeout = exit_timeout
        self._reset_state()
        _clients.add(self)
        if self._table_entries and _load_tables:
            load_value_tables()

    def _reset_state(self) -> None:
        """Fresh per-process state: used at construction and in a forked child."""
        self._wake = threading.Event()
        self._stop = threading.Event()  # set by close(): ends a backoff at once
        # record_server()'s queue and drop rules (record_queue.py, in C when built).
        self._queue = new_queue(
            self._max_buffered,
            self._max_long_chars,
            self._batch_size,
            self._wake.set,
            self._start,
            _clean,
            cut,
        )
        # The queue's own record() answers record_server() calls on this client:
        # no Python frame between the caller and the queue (the method below is
        # the same, for the class's documentation and subclasses).
        self.record_server = self._queue.record  # type: ignore[method-assign]
        self._held_since = 0.0  # perf_counter() when the flusher last took the GIL back
        # The threads waiting in record_many() or flush() (set.add and discard are
        # atomic under the GIL): while there are any, no pause within a batch.
        self._waiting: set[int] = set()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closing = False
        self._sock: socket.socket | None = None
        # The batch taken from the queue and not yet written whole (its raw values,
        # sender domain parts already cut for interned), and its frames for this
        # connection: _out, with the byte and record offset at each frame's end.
        self._batch: tuple[list[str | None], list[str | None]] = ([], [])
        self._out_count = 0  # records in _batch: in flight
        self._out = b""
        self._out_ends: list[tuple[int, int]] = []
        self._written = 0  # bytes of _out written
        self._encoder: BatchEncoder | None = None  # this connection's
        self._room = threading.Event()  # set by the flusher when it takes from the queue
        self._sent = 0
        # Records of batches that could not be encoded (never: _clean() prevents it);
        # the queue counts those it dropped itself, by the bound that was hit.
        self._dropped_unencodable = 0
        self._connects = 0
        self._drop_warning = DropWarning()
        self._unreachable = UnreachableWarning()

    # --- the hot path: runs in the SMTP worker's own thread ---------------------

    def record_server(self, conn_ip: str | None, sender: str | None) -> None:
        """Queue one (connection IP, MAIL FROM or its domain) pair. Never blocks or raises."""
        self._queue.record(conn_ip, sender)

    def record_many(self, pairs: Iterable[Sequence[Any]], timeout: float | None = None) -> int:
        """Queue every (connection IP, sender) pair, waiting for room instead of dropping.

        For bulk callers (say, a script importing yesterday's log): where
        record_server() would drop a record because the queue is full, this waits
        until the background thread has sent enough to make room. It blocks, so
        an SMTP session should not call it. Returns how many pairs were queued:
        all of them, unless ``timeout`` seconds passed first (say, trackerd is
        down), in which case the rest were neither queued nor counted as dropped.
        Values are taken as record_server() takes them; a pair that is not two
        values raises ValueError.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        queued = 0
        items = iter(pairs)
        queue = self._queue
        while True:
            room = self._max_buffered - len(queue)
            if room <= 0:
                if not self._wait_for_room(deadline):
                    return queued
                continue
            # Two lists, no tuple per pair: a tuple is an object the garbage
            # collector tracks, and a million of them set off collections.
            conn_ips: list[str | None] = []
            senders: list[str | None] = []
            add_ip, add_sender = conn_ips.append, senders.append
            for conn_ip, sender in itertools.islice(items, min(room, 65536)):
                # As record_server() takes them: a long str cut, anything else but
                # None cleaned (a long one fills a frame whole: the flusher looped).
                if type(conn_ip) is not str:
                    if conn_ip is not None:
                        conn_ip = _clean(conn_ip)
                elif len(conn_ip) > LONG_VALUE:
                    conn_ip = cut(conn_ip)
                if type(sender) is not str:
                    if sender is not None:
                        sender = _clean(sender)
                elif len(sender) > LONG_VALUE:
                    sender = cut(sender)
                add_ip(conn_ip)
                add_sender(sender)
            if not senders:
                return queued
            queue.extend(conn_ips, senders)
            queued += len(senders)
            if not queue.started:
                self._start()
            if queue.sleeping:
                queue.sleeping = False
                self._wake.set()

    def _wait_for_room(self, deadline: float | None) -> bool:
        """Wait until the flusher takes from the queue; False once the deadline passed."""
        # Clear, then look again: a batch taken in between sets the event anew.
        self._room.clear()
        if len(self._queue) < self._max_buffered:
            return True
        if self._thread is None:
            self._start()
        self._queue.sleeping = False
        self._wake.set()
        wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
        if wait <= 0:
            return False
        waiter = threading.get_ident()
        self._waiting.add(waiter)
        try:
            self._room.wait(wait)
        finally:
            self._waiting.discard(waiter)
        return True

    def _dropped(self) -> int:
        return self._queue.dropped + self._dropped_unencodable

    def _warn_of_drops(self) -> None:
        # The queue only counts its drops: the flusher thread logs the warning. A log
        # call formats and writes under its handler's lock, and a handler can block
        # (a full pipe, a stalled syslog): never in the recording thread.
        dropped = self._dropped()
        if dropped and self._drop_warning.due(dropped, time.monotonic()):
            text = drop_text(
                dropped,
                queue_full=self._queue.dropped_full,
                over_budget=self._queue.dropped_long,
                max_buffered=self._max_buffered,
                long_value=LONG_VALUE,
                max_long_chars=self._max_long_chars,
                socket_path=self.socket_path,
            )
            log.warning("%s", text)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closing:
                return
            thread = threading.Thread(target=self._run, name="servertracker-flusher", daemon=True)
            thread.start()
            self._thread = thread
            self._queue.started = True
            atexit.register(self._flush_at_exit, os.getpid())
            # multiprocessing children leave through os._exit(), skipping atexit.
            mp_util = sys.modules.get("multiprocessing.util")
            if mp_util is not None:
                mp_util.Finalize(self, self._flush_at_exit, args=(os.getpid(),), exitpriority=10)

    # --- the flusher thread ---------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            self._wait_for_work()
            self._held_since = time.perf_counter()
            self._warn_of_drops()
            if self._closing and not len(self._queue) and not self._out_count:
                return
            try:
                self._send_available()
                backoff = _BACKOFF_MIN
            except LocalProtocolError:  # pragma: no cover - _clean() prevents it
                log.exception("dropping a batch that cannot be encoded")
                self._dropped_unencodable += self._out_count
                self._done_with_batch()
                if self._encoder is not None:
                    self._encoder.forget()  # it numbered values that never left
            except OSError as exc:
                self._keep_unwritten()
                self._disconnect()
                if self._closing:
                    return
                log.debug("cannot send to %s: %s", self.socket_path, exc)
                self._sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _wait_for_work(self) -> None:
        # Clear, announce we sleep, then re-check: a record that lands in between
        # sets the event, so no wake-up is ever lost.
        queue = self._queue
        self._wake.clear()
        queue.idle = idle = not len(queue) and not self._out_count
        queue.sleeping = True
        if idle and not self._closing:
            self._wake.wait()
            self._wake.clear()
            queue.idle = False
        if not self._closing and len(queue) < self._batch_size:
            self._wake.wait(self._flush_interval)  # gather a batch, bounded in delay
        queue.sleeping = False

    def _sleep(self, seconds: float) -> None:
        # Only close() cuts a backoff short: flush() and new records wake _wake
        # all the time, and waking on them made the exit flush retry hundreds of
        # times a second against a daemon that refuses or is not there.
        if not self._closing:
            self._stop.wait(seconds)

    def _take_batch(self, size: int) -> tuple[list[str | None], list[str | None]]:
        # One batch per send, and a pause after it once the GIL was held long
        # (_PAUSE, _LONG_HOLD), so that the worker's own thread waits for the GIL
        # about _LONG_HOLD and one batch at most. Values are str or None already;
        # taken, they are no longer in the queue.
        return self._queue.take(size)

    def _send_available(self) -> None:
        """Write everything queued; raise OSError when the connection fails."""
        while self._out_count or len(self._queue):
            # A burst, or a stalled daemon (_write_out returns on each send timeout),
            # can keep this loop going for long: drops may pile up meanwhile.
            self._warn_of_drops()
            if self._sock is None:
                self._connect()
            if not self._out_count:
                # In flight before it leaves the queue, so that flush() never sees an
                # empty queue and nothing in flight while a batch is being encoded.
                self._out_count = min(len(self._queue), self._batch_size)
                self._batch = self._take_batch(self._out_count)
                self._room.set()
            if not self._out:
                if self._encoder is not None and self._encoder.asks_again():
                    # Granted less than asked: ask again on a new connection. Every
                    # frame before was written whole, and this batch is encoded for
                    # the new connection: nothing lost, nothing counted twice.
                    self._disconnect()
                    self._connect(asking_again=True)
                self._encode_batch()
            self._write_out()
            if len(self._queue) and time.perf_counter() - self._held_since > _LONG_HOLD:
                # More waits: let the worker's thread have the GIL, if this thread
                # has held it long. A pause after every batch cost the flusher more
                # than taking and encoding a batch does in C (docs/performance.md).
                self._pause()

    def _pause(self) -> None:
        """Let the worker's thread have the GIL for a moment (see _PAUSE)."""
        time.sleep(_PAUSE)
        self._held_since = time.perf_counter()

    def _between(self) -> None:
        """Called between the steps of encoding a batch: pause if the GIL was held long
        (and no thread waits for the flusher in record_many() or flush())."""
        if time.perf_counter() - self._held_since > _LONG_HOLD and not self._waiting:
            self._pause()

    def _encode_batch(self) -> None:
        """Encode _batch for this connection into _out (and _out_ends)."""
        assert self._encoder is not None
        conn_ips, senders = self._batch
        try:
            frames, ends = self._encoder.encode(conn_ips, senders, self._batch_size, self._between)
        except LocalProtocolError:
            # A lone surrogate, or a value too long for any frame: mend them. What
            # the tables numbered for the failed frames never left: start afresh.
            self._encoder.forget()
            conn_ips, senders = list(map(_clean, conn_ips)), list(map(_clean, senders))
            self._batch = conn_ips, senders
            frames, ends = self._encoder.encode(conn_ips, senders, self._batch_size)
        self._out = b"".join(frames)
        self._out_ends = list(zip(itertools.accumulate(map(len, frames)), ends, strict=True))
        self._written = 0

    def _write_out(self) -> None:
        # If this raises, _written says which frames went whole: _keep_unwritten()
        # keeps the records of the others, to be encoded again for the next
        # connection (the daemon drops a frame cut short), so nothing is lost and
        # nothing counts twice. On a send timeout (a stalled daemon) it returns with
        # _out unfinished, and _send_available() calls it again.
        assert self._sock is not None
        view = memoryview(self._out)
        while self._written < len(view):
            try:
                self._written += self._sock.send(view[self._written :])
            except TimeoutError:
                if self._closing:
                    raise
                return
            if self._written < len(view):  # the daemon is behind: each poll() wins the GIL back
                self._pause()
        self._sent += self._out_count
        self._done_with_batch()

    def _done_with_batch(self) -> None:
        self._batch = ([], [])
        self._out, self._out_ends, self._written = b"", [], 0
        self._out_count = 0

    def _keep_unwritten(self) -> None:
        """After a failed write: the frames written whole were sent; the records
        of the others wait for the next connection, to be encoded for it (its
        tables start empty)."""
        if not self._out:
            return
        records = 0
        for byte_end, record_end in self._out_ends:
            if byte_end > self._written:
                break
            records = record_end
        if records:
            conn_ips, senders = self._batch
            self._batch = conn_ips[records:], senders[records:]
            self._sent += records
            self._out_count -= records
        self._out, self._out_ends, self._written = b"", [], 0

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_SEND_TIMEOUT)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            self._failed_to_connect(exc)
            raise
        return sock

    def _failed_to_connect(self, exc: OSError) -> None:
        """Log the unreachable warning, if this failure deserves one."""
        kind = None
        if isinstance(exc, (ConnectionRefusedError, PermissionError)):
            kind = not_a_socket(self.socket_path)  # what connect() called refused may be a file
        warning = self._unreachable.failed(exc, self.socket_path, time.monotonic(), kind)
        if warning is not None:
            log.warning("%s", warning)

    def _connect(self, asking_again: bool = False) -> None:
        table_entries = self._table_entries
        declined = False
        while True:
            sock = self._open()
            try:
                encoder = handshake(sock, table_entries)
                break
            except OlderDaemon:
                # It closes a connection after an unknown message: open another, and
                # send it the pairs that every version-1 daemon takes.
                sock.close()
                sock = self._open()
                encoder = BatchEncoder("record")
                break
            except GrantDeclined:
                sock.close()  # gives the grant back to the daemon's budget
                table_entries = 0  # and the next connection asks for none
                declined = True
            except Refused as exc:
                # Refused by the daemon itself (say, its allow-lists): as worth a
                # warning as a connect() the kernel refused.
                sock.close()
                self._failed_to_connect(exc)
                raise
            except BaseException:
                sock.close()
                raise
        if declined:
            encoder.asked = self._table_entries  # and asks again later (asks_again)
        self._sock = sock
        # A new connection's tables start empty: a batch not yet written whole is
        # encoded afresh for it (_keep_unwritten).
        self._encoder = encoder
        self._batch_size = encoder.batch_size(self._batch_asked, DEFAULT_BATCH_SIZE)
        self._queue.batch_size = self._batch_size
        self._out, self._out_ends, self._written = b"", [], 0
        self._connects += 1
        if self._unreachable.succeeded() or self._connects > 1:
            again = "reconnected" if self._connects > 1 else "connected"
            # Asking again for tables (each ASK_AGAIN at most) is routine, not news.
            level = logging.DEBUG if asking_again else logging.INFO
            log.log(level, "%s to trackerd at %s", again, self.socket_path)

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- control ----------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued has been written to trackerd; False on timeout."""
        deadline = time.monotonic() + timeout
        waiter = threading.get_ident()
        self._waiting.add(waiter)
        try:
            while len(self._queue) or self._out_count:
                if self._thread is None:
                    self._start()
                self._wake.set()
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.001)
        finally:
            self._waiting.discard(waiter)
        return True

    def close(self, timeout: float = DEFAULT_EXIT_TIMEOUT) -> bool:
        """Flush for up to timeout seconds, then stop the thread and close the socket."""
        flushed = self.flush(timeout) if self._thread is not None else not len(self._queue)
        self._closing = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_SEND_TIMEOUT * 2)
        self._disconnect()
        return flushed

    def _flush_at_exit(self, pid: int) -> None:
        if pid == os.getpid() and not self._closing:
            self.close(self._exit_timeout)

    def _after_fork_in_child(self) -> None:
        # The parent keeps and sends what it queued; this process starts empty.
        # The inherited socket is the parent's connection: close our copy of it.
        if self._sock is not None:
            self._sock.close()  # closes this process's descriptor only
        self._reset_state()

    def stats(self) -> ClientStats:
        return ClientStats(
            recorded=self._queue.recorded,
            sent=self._sent,
            buffered=len(self._queue) + self._out_count,
            dropped=self._dropped(),
            reconnects=max(0, self._connects - 1),
            connected=self._sock is not None,
            message=self._encoder.message if self._encoder is not None else "",
            table_entries=self._encoder.table_entries if self._encoder is not None else 0,
        )


def _reset_clients_in_child() -> None:
    for client in list(_clients):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_clients_in_child)


_default_client: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client used by ``servertracker.record_server()``.

    Called before forking (a pre-fork master), it loads numpy there, once for every
    worker (see Client()); record_server() builds it on its first call otherwise,
    and its background thread loads numpy on connecting (that call stays short).
    """
    client = _default(load_tables=True)
    if client._table_entries:
        load_value_tables()  # built by record_server(), which left numpy to its thread
    return client


def _default(load_tables: bool) -> Client:
    global _default_client
    client = _default_client
    if client is None:
        with _default_lock:
            if _default_client is None:
                _default_client = Client(_load_tables=load_tables)
            client = _default_client
    return client


def record_server(conn_ip: str | None, sender: str | None) -> None:
    """Record one (connection IP, sender) pair with the default client.

    The original's ``Global().RecordServer(connIP, senderDomain)``: call it from
    plain or asyncio code without awaiting; it never blocks and never raises.
    """
    client = _default_client
    if client is None:
        try:
            client = _default(load_tables=False)
        except Exception:
            return
    client.record_server(conn_ip, sender)
