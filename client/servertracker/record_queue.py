"""The queue between record_server() and the flusher thread, and its drop rules.

``RecordQueue.record()`` is record_server()'s whole hot path: it turns a value
that is neither str nor None into one (value_cut.clean), cuts a long one
(value_cut.cut), drops the record when the queue is full or the long-value
budget spent (counted, never logged here), queues it, and wakes or starts the
flusher. It never blocks and never raises an Exception. The flusher takes
records a batch at a time (``take``, or ``take_columns`` with the batch's
columns frame), out of the queue, so no value stays here once it is taken for
sending.

Two implementations with the same behaviour: the C extension module
``servertracker._record_queue`` (a record costs a few pointer writes), used when
built (servertracker/accel.py decides), and ``PyRecordQueue`` below, the
reference; tests/test_record_queue_c.py holds them to the same results.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import operator
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from servertracker import accel, protocol
from servertracker.errors import LocalProtocolError
from servertracker.value_cut import clean, cut

#: Values longer than this (no IP address, few senders) are cut (value_cut.py)
#: and share a budget of their own, so that the queue is bounded in bytes, not
#: only in records: at most max_buffered records of short values, plus
#: max_long_chars characters of long ones (issue 12 §11).
LONG_VALUE: Final = 64


def long_chars(values: Iterable[str | None]) -> int:
    """Characters of the long values: what they take of the long-value budget."""
    return sum(len(value) for value in values if value is not None and len(value) > LONG_VALUE)


class RecordQueue(Protocol):
    """What the recorder asks of a queue (either implementation)."""

    batch_size: int
    #: The flusher sleeps (record() wakes it when it is idle or a batch is ready);
    #: it was idle (nothing queued nor in flight) when it went to sleep; it runs.
    sleeping: bool
    idle: bool
    started: bool

    @property
    def max_buffered(self) -> int: ...
    @property
    def max_long_chars(self) -> int: ...
    @property
    def recorded(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def dropped_full(self) -> int: ...
    @property
    def dropped_long(self) -> int: ...
    @property
    def long_queued(self) -> int: ...
    @property
    def long_sent(self) -> int: ...

    def record(self, conn_ip: str | None, sender: str | None) -> None: ...
    def extend(self, conn_ips: list[str | None], senders: list[str | None]) -> None: ...
    def take(self, count: int) -> tuple[list[str | None], list[str | None]]: ...
    def take_columns(
        self, count: int
    ) -> tuple[list[str | None], list[str | None], bytes | None]: ...
    def snapshot(self) -> tuple[list[str | None], list[str | None]]: ...
    def __len__(self) -> int: ...


class PyRecordQueue:
    """The pure-Python RecordQueue: two deques of str or None.

    No tuple per record: record() makes no object the garbage collector tracks,
    so it never sets off a collection (a full one stalled the caller for
    milliseconds; docs/performance.md). The sender is appended last, so
    len(senders) is the number of complete records. Two threads recording at once
    may pair one's connection IP with the other's sender on the wire: each value
    counts alone, so no count changes.
    """

    def __init__(
        self,
        max_buffered: int,
        max_long_chars: int,
        batch_size: int,
        wake: Callable[[], object],
        start: Callable[[], object],
        clean: Callable[[Any], str | None] = clean,
        cut: Callable[[str], str] = cut,
    ) -> None:
        self.max_buffered = max_buffered
        self.max_long_chars = max_long_chars
        self.batch_size = batch_size
        self._wake = wake
        self._start = start
        self._clean = clean
        self._cut = cut
        self._conn_ips: collections.deque[str | None] = collections.deque()
        self._senders: collections.deque[str | None] = collections.deque()
        self.sleeping = False
        self.idle = True
        self.started = False
        self.recorded = 0
        self.dropped_full = 0
        self.dropped_long = 0
        # Characters of long values queued, and taken since; each written by one thread.
        self.long_queued = 0
        self.long_sent = 0

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_long

    def record(self, conn_ip: str | None, sender: str | None) -> None:
        """Queue one pair. Never blocks or raises."""
        try:
            # Anything but str or None would make the daemon refuse the whole batch.
            if type(conn_ip) is not str and conn_ip is not None:
                conn_ip = self._clean(conn_ip)
            if type(sender) is not str and sender is not None:
                sender = self._clean(sender)
            senders = self._senders
            if len(senders) >= self.max_buffered:
                self.dropped_full += 1
                return
            # One length check a value; only a long one costs more.
            if (conn_ip is not None and len(conn_ip) > LONG_VALUE) or (
                sender is not None and len(sender) > LONG_VALUE
            ):
                if conn_ip is not None:
                    conn_ip = self._cut(conn_ip)
                if sender is not None:
                    sender = self._cut(sender)
                chars = long_chars((conn_ip, sender))
                if self.long_queued - self.long_sent + chars > self.max_long_chars:
                    self.dropped_long += 1
                    return
                self.long_queued += chars
            self._conn_ips.append(conn_ip)
            senders.append(sender)
            self.recorded += 1
            if self.sleeping and (self.idle or len(senders) >= self.batch_size):
                self.sleeping = False
                self._wake()
            if not self.started:
                self._start()
        except Exception:  # recording must never break an SMTP session
            pass

    def extend(self, conn_ips: list[str | None], senders: list[str | None]) -> None:
        """Queue values already cleaned and cut (record_many's); never drops. Their
        long values take their share of the budget (record_many waits rather than
        drops, so it is not refused here), or taking them would free more."""
        self.long_queued += long_chars(conn_ips) + long_chars(senders)
        self._conn_ips.extend(conn_ips)
        self._senders.extend(senders)
        self.recorded += len(senders)

    def take(self, count: int) -> tuple[list[str | None], list[str | None]]:
        """The first ``count`` records (at most all), out of the queue."""
        count = max(0, min(count, len(self._senders)))
        # map() calls popleft in C, faster than a comprehension: this runs while
        # the worker's thread may be waiting for the GIL (docs/performance.md).
        calls = operator.call
        conn_ips = list(map(calls, itertools.repeat(self._conn_ips.popleft, count)))
        senders = list(map(calls, itertools.repeat(self._senders.popleft, count)))
        if self.long_sent != self.long_queued:  # some long values wait: free their share
            self.long_sent += long_chars(conn_ips) + long_chars(senders)
        return conn_ips, senders

    def take_columns(self, count: int) -> tuple[list[str | None], list[str | None], bytes | None]:
        """take(count), and the columns frame of what it took: None where
        protocol.encode_columns() raises (the flusher's own encoding decides) or
        none was taken. The C twin makes the frame without the GIL."""
        conn_ips, senders = self.take(count)
        frame = None
        if senders:
            with contextlib.suppress(LocalProtocolError):
                frame = protocol.encode_columns(conn_ips, senders)
        return conn_ips, senders, frame

    def snapshot(self) -> tuple[list[str | None], list[str | None]]:
        """Copies of the queued values (for tests)."""
        return list(self._conn_ips), list(self._senders)

    def __len__(self) -> int:
        return len(self._senders)


def _c_queue() -> Callable[..., RecordQueue] | None:
    """The C RecordQueue, if it is to run and was built with these limits."""
    module = accel.load("servertracker._record_queue")
    if module is None or (module.LONG_VALUE, module.MAX_MESSAGE_SIZE, module.MAX_PAIRS) != (
        LONG_VALUE,
        protocol.MAX_MESSAGE_SIZE,
        protocol.MAX_PAIRS_PER_MESSAGE,
    ):
        return None
    queue: Callable[..., RecordQueue] = module.RecordQueue
    return queue


#: The RecordQueue class this process uses: the C one when built, else PyRecordQueue.
new_queue: Callable[..., RecordQueue] = _c_queue() or PyRecordQueue
