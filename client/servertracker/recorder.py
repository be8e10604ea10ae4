"""The fork-safe, non-blocking recorder that SMTP worker processes use.

``Client.record_server()`` only appends to a bounded in-memory queue
(record_queue.py, in C when built): it never blocks and never raises. Past the
bound, records are dropped and counted. A background thread (flusher.py)
batches the queue into record frames and writes them to trackerd. This module
owns a client's state and its life: construction, ``record_many()``, flush,
close, stats, the default client.

Fork safety: ``os.register_at_fork`` resets a child's copy of every client, so
records queued in the parent are sent once (by the parent), the child never
touches the parent's socket, and the child starts its own thread and
connection on its first record.
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from servertracker import protocol, record_queue
from servertracker.batch_encoder import DEFAULT_TABLE_ENTRIES, BatchEncoder, load_value_tables
from servertracker.client_arguments import seconds, whole
from servertracker.flusher import _SEND_TIMEOUT, DEFAULT_BATCH_SIZE, Flusher
from servertracker.hash_keys import hash_is_secret
from servertracker.paths import resolve_socket_path
from servertracker.reachability import DropWarning, UnreachableWarning
from servertracker.record_queue import LONG_VALUE
from servertracker.value_cut import clean as _clean
from servertracker.value_cut import cut

__all__ = ["DEFAULT_BATCH_SIZE", "Client", "ClientStats", "default_client", "record_server"]

DEFAULT_MAX_BUFFERED = 100_000
DEFAULT_FLUSH_INTERVAL = 0.1
DEFAULT_EXIT_TIMEOUT = 1.0
#: The long-value budget's default (record_queue.py).
DEFAULT_MAX_LONG_CHARS = 256 * 1024
#: flush() looks again at least this often (seconds) while it waits for the flusher.
_FLUSH_LOOK = 0.05

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


class Client(Flusher):
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
        value tables (0 to 1,048,576). The default, 0, asks for none: the client
        sends "columns" and never loads numpy (batch_encoder.DEFAULT_TABLE_ENTRIES
        says why). Asking for some sends "interned" (values numbered per
        connection; not where the interpreter's hash() is not secret:
        hash_keys.hash_is_secret), for a host whose daemon core is the bottleneck.
        Each id takes 56 bytes in this process (value_tables.py: four slots of a
        key and an id, and the id's key), allocated on connecting: 16,384
        (SMTP_TABLE_ENTRIES) costs about 1.8 MB for the two. A client that will
        ask for tables loads numpy here (about 0.2 s, once a process; in the
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
        table_entries = whole("table_entries", table_entries, 0, protocol.MAX_INTERN_ENTRIES)
        max_buffered = whole("max_buffered", max_buffered, 1)
        max_long_chars = whole("max_long_chars", max_long_chars, 0)
        if batch_size is not None:
            batch_size = whole("batch_size", batch_size, 1, protocol.MAX_PAIRS_PER_MESSAGE)
        flush_interval = seconds("flush_interval", flush_interval, zero=False)
        exit_timeout = seconds("exit_timeout", exit_timeout, zero=True)
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
        self._queue = record_queue.new_queue(
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
        # the same, for the class's documentation; a subclass's own is kept).
        if type(self).record_server is Client.record_server:
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
        # Set by the flusher when nothing is queued nor in flight: flush() waits on
        # it. Polling instead (a 1 ms sleep, then a look) cost a worker ~50 ms of
        # CPU in its final flush, a quarter of a µs a record (docs/performance.md).
        self._drained = threading.Event()
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

    # --- control ----------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued has been written to trackerd; False on timeout."""
        deadline = time.monotonic() + timeout
        waiter = threading.get_ident()
        self._waiting.add(waiter)
        try:
            while True:
                # Clear, then look: the flusher sets _drained once it finds nothing
                # queued nor in flight, so a drain after the look is never missed.
                self._drained.clear()
                if not (len(self._queue) or self._out_count):
                    return True
                if self._thread is None:
                    self._start()
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Bounded: records from other threads may keep the flusher busy,
                # and a flusher in a backoff sets nothing.
                self._drained.wait(min(remaining, _FLUSH_LOOK))
        finally:
            self._waiting.discard(waiter)

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

    It sends "columns" (Client()'s default: no value tables, no numpy). Where a
    default client would ask for tables, calling this before forking (a pre-fork
    master) loads numpy there, once for every worker (see Client());
    record_server() builds it on its first call otherwise, and its background
    thread loads numpy on connecting (that call stays short).
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
