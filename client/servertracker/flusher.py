"""The flusher thread of a Client: batches off the queue, encoded, written to trackerd.

``Flusher`` is the half of recorder.Client that runs in its background thread
(a mixin: Client owns the state, built in its _reset_state()). The thread sleeps
until a batch is ready or flush_interval passes, takes a batch off the queue
(record_queue.py), encodes it for its connection (batch_encoder.py: `interned`,
`columns` or `record`) and writes it, reconnecting with backoff whenever trackerd
is down or restarts. A batch is written whole or, after a failed write, the
records of its frames not written whole are encoded again for the next
connection. It lets go of the interpreter lock often enough that the worker's
own thread never waits for it long (_PAUSE, _LONG_HOLD), and it alone logs
(drops, an unreachable daemon): record_server() never does.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time

from servertracker._log import log
from servertracker.batch_encoder import BatchEncoder, GrantDeclined, OlderDaemon, handshake
from servertracker.errors import LocalProtocolError
from servertracker.paths import closed_directory, not_a_socket
from servertracker.reachability import DropWarning, Refused, UnreachableWarning, drop_text
from servertracker.record_queue import LONG_VALUE, PyRecordQueue, RecordQueue
from servertracker.value_cut import clean

#: The batch size where the Client was given none and the connection does not
#: send interned (batch_encoder.INTERNED_BATCH_SIZE), nor columns with the C queue.
DEFAULT_BATCH_SIZE = 512
#: The batch size for columns where the C queue makes the frame without the GIL
#: (take_columns): a bigger batch no longer holds the lock longer, and halves what
#: each batch costs both sides (a wake-up, a send, a message): about 0.05 µs a
#: record each, worker and daemon (docs/performance-history.md, wcost's
#: subsection). Within the daemon's first slice (msgpack_server.FIRST_SLICE), so
#: that a frame is still counted in one call. The pure-Python queue encodes
#: holding the GIL: its batches stay at 512.
C_COLUMNS_BATCH_SIZE = 1024
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 1.0
_SEND_TIMEOUT = 0.5
#: Between two batches of a backlog (once it has held the GIL _LONG_HOLD), and
#: after a send the socket took only part of, the flusher sleeps this long
#: without the GIL. A send lets go of the GIL, but for a few microseconds only:
#: the flusher took it back before the worker's thread, woken for it, could run,
#: and so held it batch after batch for up to the 5 ms switch interval (traced
#: with perf sched: docs/performance-history.md, "record_server() latency, daemon up").
_PAUSE = 0.0001
#: The flusher pauses (_PAUSE) at the next step of a batch's encoding once it has
#: held the GIL this long (seconds). The worker's thread, when it wants the GIL,
#: then waits that long plus one step (a few array operations). Only a sleep hands
#: the GIL over: numpy lets go of it in each call, but the flusher takes it back
#: before the woken thread can, and a forced switch comes after 5 ms at the
#: soonest (docs/performance-history.md, "record_server() latency, daemon up").
#: Not while a thread waits in record_many() or flush(): it waits for the flusher,
#: and the pauses made a bulk import take 1.6 times as long.
_LONG_HOLD = 0.0002


class Flusher:
    """The flusher thread's methods of recorder.Client (which sets these attributes)."""

    socket_path: str
    _max_buffered: int
    _max_long_chars: int
    _table_entries: int
    _batch_asked: int | None
    _batch_size: int
    _flush_interval: float
    _queue: RecordQueue
    _wake: threading.Event
    _stop: threading.Event
    _room: threading.Event
    _drained: threading.Event
    _held_since: float
    _waiting: set[int]
    _closing: bool
    _sock: socket.socket | None
    _batch: tuple[list[str | None], list[str | None]]
    _out_count: int
    _out: bytes
    _out_ends: list[tuple[int, int]]
    _written: int
    _encoder: BatchEncoder | None
    _sent: int
    _dropped_unencodable: int
    _connects: int
    _drop_warning: DropWarning
    _unreachable: UnreachableWarning

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

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            self._wait_for_work()
            self._held_since = time.perf_counter()
            self._warn_of_drops()
            if self._closing and not len(self._queue) and not self._out_count:
                self._drained.set()
                return
            try:
                self._send_available()
                backoff = _BACKOFF_MIN
            except LocalProtocolError:  # pragma: no cover - clean() prevents it
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
        if idle:
            self._drained.set()  # flush() waits for it
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

    def _take_batch(self, size: int) -> None:
        """Take a batch off the queue into _batch (values are str or None already;
        taken, they are no longer in the queue). On a connection that sends columns
        (and will not ask for tables again first) with its frame in _out, made by
        the C queue without the GIL: the worker's thread never waits for the
        encoding of a batch (docs/performance.md)."""
        encoder = self._encoder
        if encoder is not None and encoder.message == "columns" and not encoder.asks_again():
            conn_ips, senders, frame = self._queue.take_columns(size)
            self._batch = conn_ips, senders
            if frame is not None:
                self._out = frame
                self._out_ends = [(len(frame), len(senders))]
                self._written = 0
            return
        self._batch = self._queue.take(size)

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
                self._take_batch(self._out_count)
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
            conn_ips, senders = list(map(clean, conn_ips)), list(map(clean, senders))
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
        closed = None
        if isinstance(exc, PermissionError):
            closed = closed_directory(self.socket_path)  # not the socket's mode: no group helps
        warning = self._unreachable.failed(exc, self.socket_path, time.monotonic(), kind, closed)
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
        default = DEFAULT_BATCH_SIZE
        if encoder.message == "columns" and not isinstance(self._queue, PyRecordQueue):
            default = C_COLUMNS_BATCH_SIZE
        self._batch_size = encoder.batch_size(self._batch_asked, default)
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
