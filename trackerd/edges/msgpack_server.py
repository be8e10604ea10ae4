"""The msgpack protocol server: one task per connection, dispatching decoded messages.

Records are applied to the tracker as soon as their frame is complete, in
order, so a status or ping reply on a connection reflects every record sent
before it on that connection. A large frame is applied in slices with the
event loop let go between them, so no message keeps the others (or the
watchdog) waiting. A peer that sends garbage gets an error reply
and is closed; everyone else goes on. Memory per connection is bounded by the
decoder, and across connections by a global budget for unfinished frames: past
it, the connections whose unfinished frames began first are closed with "busy",
so peers that trickle frames cannot lock out one that sends its frame whole.

A connection may ask once for interned value tables (docs/protocol.md, "interned"):
the grant comes from a budget shared by all connections (--max-interned-entries)
and returns to it when the connection closes.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio
from anyio.abc import SocketStream

from servertracker import protocol
from servertracker.batch_encoder import MIN_TABLE_ENTRIES
from servertracker.errors import ProtocolError
from servertracker.paths import SOCKET_OPTION
from trackerd.core.interned import IPS, SENDERS
from trackerd.core.raw_cache import COLUMNS_HEAD, ColumnsType, join_columns, scan_columns
from trackerd.core.tracker import STATUS_FIELDS, Tracker
from trackerd.core.value_table import BYTES_PER_ENTRY, DEFAULT_MAX_INTERNED_ENTRIES, ValueTables
from trackerd.core.wording import more_since
from trackerd.edges.access import AllowLists, ConnectionLimits, LogThrottle
from trackerd.edges.endpoint import ListenerSettings
from trackerd.edges.socket_files import SocketFileSettings
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import LARGEST_READ, Connection, StreamServer
from trackerd.edges.stream_server import SLICE_SECONDS as SLICE_SECONDS  # policy_loop.py's
from trackerd.option_types import Arguments, int_between

if TYPE_CHECKING:
    from trackerd.core._ccolumns import Columns

log = logging.getLogger(__name__)

#: Bounds of the pairs handed to one slice (the time bound is SLICE_SECONDS). A
#: message of at most MIN_SLICE pairs is counted in one call without a deadline:
#: at the worst cost of one value (docs/performance.md) that is a few ms.
MIN_SLICE = 16
MAX_SLICE = 16384
#: Pairs handed to a frame's first slice: at least a client library's whole batch
#: (flusher.DEFAULT_BATCH_SIZE, and C_COLUMNS_BATCH_SIZE where the C queue makes the
#: frame; test_interned_slices checks both), so that an honest worker's frame is one
#: call, not six (each slice has a fixed cost: 0.2 µs a record at 16, 32, 64 ...),
#: within its connection's turn (take_turn()).
#: A slice still stops at the first cache miss past its deadline; the size only
#: bounds the look-ups done for pairs it does not reach (about 0.1 ms at most).
FIRST_SLICE = 1024


def next_slice(size: int, handed: int, done: int) -> int:
    """How many pairs (or new values) to hand the next slice, after one that was
    handed ``handed`` (at most ``size``) and did ``done``: double while slices
    finish what they are handed, else follow what the last one did. The one rule
    for counting a columns message and for defining an interned one's values: a
    slice's preparation (hashing, cache look-ups) is paid for every value handed,
    so handing far more than a slice reaches costs more than the values it does
    (issue 13 review: 16,384 handed to each 2 ms slice made defining 3x dearer
    than counting the same values by `columns`)."""
    return min(MAX_SLICE, size * 2) if done >= handed else max(MIN_SLICE, 2 * done)


#: Consecutive columns messages that have arrived whole are counted together, as
#: one (raw_cache.join_columns()), while they come to at most this many bytes
#: (BATCH_FRAME within a batch's turn: join_limit()) and the pairs to at most
#: JOIN_PAIRS (a frame that would take them past it is counted on its own, so a
#: joined message holds at most MAX_PAIRS_PER_MESSAGE too): what counting one
#: message costs on top of its pairs (the calls, the arrays: about 0.1 µs a pair
#: at 1,024 pairs a message, docs/performance.md) is paid once for all of them.
#: They are there only when the daemon is behind (a worker's flusher writes a
#: batch, of 1,024 pairs, as soon as it is taken), so this costs a worker that is
#: not waiting nothing. Within the large frames' turn the memory bound becomes
#: this (and its copy, joined).
JOIN_BYTES = 256 * 1024
#: The pairs handed to a joined message's first slice: a slice's look-ups for pairs
#: it does not reach (past its deadline) cost at most about 0.4 ms.
JOIN_PAIRS = 4096


def join_limit(size: int) -> int:
    """The most bytes the frames joined to a first one of size bytes may come to:
    within a batch's turn (BATCH_FRAME) a batch's size, so that a batch never waits
    behind more than a batch (issue 12), and no frame larger is counted there;
    within a large frame's turn, JOIN_BYTES."""
    return BATCH_FRAME if size <= BATCH_FRAME else JOIN_BYTES


#: Frames larger than this are decoded and counted one at a time, across all
#: connections. A frame's values live while it is counted in slices, with other
#: connections served in between: without a turn each, a thousand connections
#: could each hold a decoded 1 MiB frame at once. Smaller frames (a ping, a status
#: request, a few dozen pairs) never wait for a turn.
LARGE_FRAME = 1024
#: Frames up to this size (a client library's batch: 512 pairs are about 17 KiB)
#: take turns among themselves, apart from the larger ones: an honest worker's
#: batch never waits behind 1 MiB frames of costly values from many connections
#: (issue 12 review: 6-15 s behind 40-60 of them). Memory stays bounded: at most
#: one decoded frame of each kind at a time.
BATCH_FRAME = 64 * 1024

#: Fleet sketch names in category order: the status fields' names.
FLEET_NAMES = tuple(STATUS_FIELDS[category] for category in sorted(STATUS_FIELDS))

TEXT_BUFFERS_FULL = "server buffers full"

#: The largest --max-interned-entries: 2^30 entries could cost 21 GiB of address space
#: (value_table.BYTES_PER_ENTRY), mapped only where ids are defined.
MAX_INTERNED_BUDGET = 1 << 30
#: One connection is charged at most 1/GRANT_SHARE of --max-interned-entries (a
#: grant of n ids charges 2n): a handful of peers asking for the most (2^20 ids)
#: cannot take the whole budget, it takes GRANT_SHARE of them. At the default
#: budget a grant is at most 262,144 ids: twice a bulk importer's request
#: (batch_encoder.BULK_TABLE_ENTRIES), 16 times a worker's default.
GRANT_SHARE = 16
#: The smallest budget whose grants a default client uses (it declines fewer ids
#: than batch_encoder.MIN_TABLE_ENTRIES, and sends `columns`).
_WORTH_GRANTING = 2 * GRANT_SHARE * MIN_TABLE_ENTRIES


class Interned:
    """One connection's interned state: asked yet, and the tables granted (if any)."""

    __slots__ = ("asked", "tables")

    def __init__(self) -> None:
        self.asked = False
        self.tables: ValueTables | None = None

    @property
    def charged(self) -> int:
        """Entries charged against the budget: both tables."""
        return 2 * self.tables.granted if self.tables is not None else 0


#: FileDescriptorName= of this listener's socket in systemd/trackerd.socket.
FD_NAME = "trackerd"


class TrackerServer(StreamServer):
    """Serves the tracker protocol (docs/protocol.md)."""

    #: When the daemon is behind, a worker's socket holds several of its frames
    #: (1,024 pairs, about 35 KiB each), counted together once read (JOIN_BYTES);
    #: a read of 64 KiB took one and a part.
    read_size = LARGEST_READ

    @classmethod
    def add_arguments(cls, arguments: Arguments) -> None:
        """The socket file's owner, group and mode (the path is paths.py's --socket)."""
        SocketFileSettings.add_arguments(arguments, SOCKET_OPTION.flag, "the socket")

    @classmethod
    def add_limit_arguments(cls, arguments: Arguments) -> None:
        """The interned tables' budget (in --help's "access and limits" group)."""
        default_cap = DEFAULT_MAX_INTERNED_ENTRIES // (2 * GRANT_SHARE)
        arguments.add_argument(
            "--max-interned-entries",
            type=int_between(0, MAX_INTERNED_BUDGET),
            default=DEFAULT_MAX_INTERNED_ENTRIES,
            metavar="N",
            help=(
                "value-table entries granted to all connections together for the "
                "'interned' message, one entry per id per table: a grant of n ids is two "
                "tables of n and takes 2n, returned at close. One connection is granted "
                f"at most 1/{GRANT_SHARE} of N ({default_cap:,} ids at the default). At "
                f"most {BYTES_PER_ENTRY} bytes an entry, mapped only when an id is defined. "
                f"Below 2 x {GRANT_SHARE} x {MIN_TABLE_ENTRIES:,} = {_WORTH_GRANTING:,} every "
                f"grant is under the {MIN_TABLE_ENTRIES:,} ids a client asking for tables "
                "takes, so clients send 'columns'; 0 turns tables off (default: %(default)s)"
            ),
        )

    @classmethod
    def listener_from_args(cls, args: argparse.Namespace, path: Path) -> ListenerSettings:
        return ListenerSettings(
            FD_NAME, path, SocketFileSettings.from_args(args, SOCKET_OPTION.flag)
        )

    def __init__(
        self,
        tracker: Tracker,
        writer: StatusWriter,
        *,
        allow: AllowLists | None = None,
        limits: ConnectionLimits | None = None,
        max_message_size: int = protocol.MAX_MESSAGE_SIZE,
        max_interned: int = DEFAULT_MAX_INTERNED_ENTRIES,
    ) -> None:
        super().__init__(allow=allow, limits=limits)
        self._tracker = tracker
        #: Interned table entries not granted (a grant of n ids charges 2n).
        self.interned_left = max_interned
        #: The most ids one connection is granted in each table (GRANT_SHARE).
        self.grant_cap = max_interned // (2 * GRANT_SHARE)
        self._writer = writer
        self._max_message_size = max_message_size
        self._buffered_total = 0
        self._error_log = LogThrottle(1.0)
        # fast_acquire: a lock no one else holds is taken without a turn of the event
        # loop (each connection's task lets the loop go by its turns: take_turn()).
        self._counting = anyio.Lock(fast_acquire=True)  # the turn to count a large frame
        self._counting_batch = anyio.Lock(fast_acquire=True)  # ... a batch-sized one
        self.protocol_errors = 0

    def refusal(self, code: str, text: str) -> bytes:
        return protocol.encode(protocol.Error(code, text))

    async def serve_connection(self, stream: SocketStream) -> None:
        decoder = protocol.MessageDecoder(self._max_message_size)
        connection = Connection()
        interned = Interned()
        try:
            while True:
                # The decoder copies what arrives; the read buffer is then overwritten.
                count = await self.receive_on(connection, stream, decoder.receive_data)
                if connection.shed:
                    await self._send_busy(stream)
                    return
                if count is None:
                    return
                if not count:
                    decoder.receive_data(b"")
                try:
                    await self._dispatch_all(stream, decoder, interned, connection)
                except ProtocolError as exc:
                    self.count_protocol_error(exc.code)
                    if self._error_log.ready() is not None:
                        # The text is one of protocol.ERROR_TEXTS: it holds no input.
                        log.warning(
                            "closing a connection after a protocol error: %s (%s)",
                            exc.message,
                            exc.code,
                        )
                    await self.send(stream, protocol.encode(protocol.Error(exc.code, exc.message)))
                    return
                if not count:
                    return  # end of stream, and every complete frame handled
                self._account(connection, decoder)
                if connection.shed:
                    await self._send_busy(stream)
                    return
        finally:
            self._release(connection)
            self.forget(connection)
            self.interned_left += interned.charged
            interned.tables = None

    def _account(self, connection: Connection, decoder: protocol.MessageDecoder) -> None:
        """Update this connection's share; past the budget, shed the oldest frames."""
        if connection.shed:
            return  # its share is released already; it closes next
        self.track(connection, decoder.buffered > 0, decoder.frames)
        self._buffered_total += decoder.buffered - connection.buffered
        connection.buffered = decoder.buffered
        while self._buffered_total > self.limits.max_buffered_total:
            oldest = self.oldest_frame()
            if oldest is None:
                return
            self._release(oldest)
            self.shed(oldest)
            suppressed = self._busy_log.ready()
            if suppressed is not None:
                log.warning(
                    "unfinished frames exceed %d bytes across connections: closed the one "
                    "whose frame began first%s",
                    self.limits.max_buffered_total,
                    more_since(suppressed),
                )

    def _release(self, connection: Connection) -> None:
        self._buffered_total -= connection.buffered
        connection.buffered = 0

    async def _send_busy(self, stream: SocketStream) -> None:
        await self.send(
            stream, protocol.encode(protocol.Error(protocol.ERR_BUSY, TEXT_BUFFERS_FULL))
        )

    async def _record(
        self,
        connection: Connection,
        conn_ips: Sequence[str | None],
        senders: Sequence[str | None],
    ) -> None:
        """Count a message's pairs in slices, yielding to the event loop between them.

        A 1 MiB frame holds tens of thousands of pairs; counted in one go, new
        values at the worst cost each would keep every other connection, and the
        watchdog notification, waiting for seconds. Each slice is bounded by time,
        not by a count guessed from earlier ones: the tracker stops at the first
        cache miss past SLICE_SECONDS and says how far it got (issue 12 §1: a
        count adapted from a previous frame of cheap repeats let a frame of costly
        values run a second in one slice). The count of pairs handed over only
        saves the look-ups of pairs a slice will not reach: it starts at a client
        batch for every frame, doubles while slices finish, and follows what the
        last one did. Each pair is counted once and in order; a status reply on another
        connection may show part of a frame counted. Shielded: a frame being
        counted is finished even at shutdown, so a frame counts whole or not at all.
        The first slice ends with the connection's turn (take_turn()): a message
        counted within it costs no turn of the event loop of its own.
        """
        record = self._tracker.record_columns
        if len(conn_ips) <= MIN_SLICE:  # one slice, no await: no shield needed
            record(conn_ips, senders)  # at the worst cost per value, a few ms
            return
        await self._in_slices(
            connection,
            len(conn_ips),
            lambda start, end, deadline: record(conn_ips[start:end], senders[start:end], deadline),
        )

    async def _record_scanned(self, connection: Connection, columns: Columns) -> None:
        """_record() of a columns message read in place by the C extension
        (Tracker.record_scanned), or of several joined (_join_following()); its body
        is overwritten once counted, or if counting fails."""
        try:
            record, count = self._tracker.record_scanned, len(columns)
            if count <= MIN_SLICE:
                record(columns, 0, count)
                return
            await self._in_slices(
                connection,
                count,
                lambda start, end, deadline: record(columns, start, min(end, count), deadline),
                max(FIRST_SLICE, min(count, JOIN_PAIRS)),
            )
        finally:
            columns.release()

    def _join_following(
        self, decoder: protocol.MessageDecoder, first: Columns, size: int
    ) -> tuple[Columns, Columns | protocol.RecordColumns | ProtocolError | None]:
        """first (a frame of size bytes), joined with the columns messages that follow
        it whole in the decoder (join_limit(), JOIN_PAIRS), and what was taken from
        the decoder after them: a columns message read in place that would take the
        pairs past JOIN_PAIRS, one not read in place (decoded), or the error its body
        raised; None if nothing. The caller counts the joined message, then that one
        (or raises the error): in the order they came."""
        parts = [first]
        pairs = len(first)
        limit = join_limit(size)
        after: Columns | protocol.RecordColumns | ProtocolError | None = None
        try:
            while pairs < JOIN_PAIRS:
                following = decoder.next_frame_size
                if size + following > limit or not decoder.next_body_starts_with(COLUMNS_HEAD):
                    break
                message = self._next_message(decoder)
                if type(message) is not ColumnsType:
                    # Begins as one, so decode_body() made it a columns message.
                    after = cast(protocol.RecordColumns, message)
                    break
                part = cast("Columns", message)
                if pairs + len(part) > JOIN_PAIRS:
                    after = part  # counted on its own, next: a joined one stays within
                    break
                parts.append(part)
                size += following
                pairs += len(part)
        except ProtocolError as error:
            after = error
        if len(parts) == 1:
            return first, after
        try:
            return join_columns(parts), after
        finally:
            for part in parts:
                part.release()

    async def _in_slices(
        self,
        connection: Connection,
        count: int,
        record: Callable[[int, int, float], int],
        first: int = FIRST_SLICE,
    ) -> None:
        """Count pairs 0 to count with record(start, end, deadline) -> pairs done, in
        slices (see _record), each ending with the connection's turn; shielded, so a
        message counts whole even at shutdown (the first slice has no await, and is
        handed ``first`` pairs)."""
        size = first
        done = record(0, size, connection.turn_ends)
        if done >= count:
            return
        with anyio.CancelScope(shield=True):
            size = next_slice(size, min(size, count), done)
            start = done
            while start < count:
                # Let other connections, and the watchdog, in between two slices.
                await self.take_turn(connection)
                done = record(start, start + size, connection.turn_ends)
                size = next_slice(size, min(size, count - start), done)
                start += done

    def _grant(self, interned: Interned, entries: int) -> protocol.InternReply:
        """Grant what is left of the budget, at most entries ids in each table and
        at most grant_cap (GRANT_SHARE)."""
        if interned.asked:
            raise ProtocolError(protocol.ERR_BAD_MESSAGE, protocol.TEXT_SECOND_INTERN)
        interned.asked = True
        granted = min(entries, self.interned_left // 2, self.grant_cap)
        if granted:
            interned.tables = self._tracker.value_tables(granted)
            self.interned_left -= interned.charged
        return protocol.InternReply(granted)

    async def _record_interned(self, interned: Interned, message: protocol.RecordInterned) -> None:
        """Check a whole interned message, then define its new values (in slices, as
        _record), then count its references (numpy only, one go)."""
        tables = interned.tables
        if tables is None:
            raise ProtocolError(protocol.ERR_BAD_MESSAGE, protocol.TEXT_INTERNED_NO_GRANT)
        text, ip_refs, sender_refs = tables.violation(message)
        if text is not None:  # nothing counted: one of protocol.ERROR_TEXTS
            raise ProtocolError(protocol.ERR_BAD_MESSAGE, text)
        self.interned_messages += 1
        tracker = self._tracker
        columns = ((IPS, message.ip_first, message.ip_new),
                   (SENDERS, message.sender_first, message.sender_new))  # fmt: skip
        if len(message.ip_new) + len(message.sender_new) <= MIN_SLICE:
            for column, first, new in columns:
                if new:
                    tracker.define_into(tables, column, first, new)
            tracker.count_references(tables, ip_refs, sender_refs)
            await anyio.lowlevel.checkpoint()
            return
        with anyio.CancelScope(shield=True):  # counted whole, even at shutdown
            # One deadline for the message's definitions, renewed only after the
            # event loop was let go: a message counted within SLICE_SECONDS takes one
            # turn of the loop, as a columns message does. The values handed to a
            # slice follow next_slice(), as _record's pairs do; the clock is read
            # before each call too, so a slice never starts (and pays its look-ups
            # and a chunk of normalising) past its deadline, say at the second column.
            deadline = time.perf_counter() + SLICE_SECONDS
            size = FIRST_SLICE
            for column, first, new in columns:
                start = 0
                while start < len(new):
                    if time.perf_counter() > deadline:
                        await anyio.lowlevel.checkpoint()
                        deadline = time.perf_counter() + SLICE_SECONDS
                    handed = new[start : start + size]
                    done = tracker.define_into(tables, column, first + start, handed, deadline)
                    size = next_slice(size, len(handed), done)
                    start += done
            tracker.count_references(tables, ip_refs, sender_refs)
            await anyio.lowlevel.checkpoint()

    async def _dispatch_all(
        self,
        stream: SocketStream,
        decoder: protocol.MessageDecoder,
        interned: Interned,
        connection: Connection,
    ) -> None:
        """Handle every complete message buffered, letting the event loop go whenever
        the connection's turn is up (take_turn())."""
        recorded = False
        try:
            while True:
                await self.take_turn(connection)
                size = decoder.next_frame_size
                if size > LARGE_FRAME:
                    # Its turn first, then decode and count it; a reply (to a large
                    # status request, say) is sent after the turn is given back.
                    turn = self._counting if size > BATCH_FRAME else self._counting_batch
                    async with turn:
                        message = self._next_message(decoder)
                        if type(message) is ColumnsType:
                            columns, after = self._join_following(
                                decoder, cast("Columns", message), size
                            )
                            del message
                            await self._record_scanned(connection, columns)
                            del columns  # released: its body is overwritten
                            recorded = True
                            if after is None:
                                continue
                            if isinstance(after, ProtocolError):
                                raise after
                            if type(after) is ColumnsType:
                                await self._record_scanned(connection, cast("Columns", after))
                                del after
                                continue
                            message = after  # counted next, below
                        if isinstance(message, protocol.RecordColumns | protocol.Record):
                            conn_ips, senders = _columns(message)
                            del message  # the columns hold the values, only while counted
                            await self._record(connection, conn_ips, senders)
                            del conn_ips, senders
                            recorded = True
                            continue
                        if isinstance(message, protocol.RecordInterned):
                            await self._record_interned(interned, message)
                            del message
                            recorded = True
                            continue
                else:
                    message = self._next_message(decoder)
                if message is protocol.NEED_DATA or message is protocol.CLOSED:
                    return
                if type(message) is ColumnsType:
                    await self._record_scanned(connection, cast("Columns", message))
                    del message
                    recorded = True
                elif isinstance(message, protocol.RecordColumns | protocol.Record):
                    conn_ips, senders = _columns(message)
                    del message
                    await self._record(connection, conn_ips, senders)
                    # Its values are done with: none lives on while other peers run.
                    del conn_ips, senders
                    recorded = True
                elif isinstance(message, protocol.RecordInterned):
                    await self._record_interned(interned, message)
                    del message
                    recorded = True
                elif isinstance(message, protocol.InternRequest):
                    await self.send(stream, protocol.encode(self._grant(interned, message.entries)))
                elif isinstance(message, protocol.StatusRequest):
                    await self.send(
                        stream, protocol.encode(protocol.StatusReply(await self._writer.snapshot()))
                    )
                elif isinstance(message, protocol.FeaturesRequest):
                    await self.send(stream, protocol.encode(self._features()))
                elif isinstance(message, protocol.Ping):
                    await self.send(stream, protocol.encode(protocol.Pong()))
                elif isinstance(message, protocol.FleetRequest):
                    await self.send(stream, protocol.encode(self._fleet_reply()))
                else:
                    raise ProtocolError(protocol.ERR_UNEXPECTED, protocol.TEXT_UNEXPECTED)
        finally:
            if recorded:
                self._writer.notify_changed()

    def _next_message(self, decoder: protocol.MessageDecoder) -> object:
        """The next message, NEED_DATA or CLOSED; with the C extension, a columns
        message comes as a Columns read in place (raw_cache.scan_columns(): only
        bodies that decode_body() would take as they are), every other body
        decoded as usual, so every verdict is decode_body()'s."""
        if not self._tracker.scans_columns:
            return decoder.next_message()
        body = decoder.next_body()
        if type(body) is not bytearray:
            return body
        columns = scan_columns(body)
        return columns if columns is not None else decoder.decode(body)

    def _features(self) -> protocol.Features:
        """What this daemon understands beyond version 1, as configured: "interned"
        only when it can grant ids (else workers would ask again and again to be
        granted 0), "fleet" only in fleet mode."""
        names = [protocol.FEATURE_COLUMNS]
        if self.grant_cap:
            names.append(protocol.FEATURE_INTERNED)
        if self._tracker.fleet is not None:
            names.append(protocol.FEATURE_FLEET)
        return protocol.Features(tuple(names))

    def _fleet_reply(self) -> protocol.FleetReply:
        """The fleet sketches (registers only), for any peer the allow-lists admit:
        they are what goes to Redis anyway (docs/fleet.md)."""
        fleet = self._tracker.fleet
        if fleet is None:
            raise ProtocolError(protocol.ERR_FLEET_OFF, protocol.TEXT_FLEET_OFF)
        self._tracker.roll_fleet_epoch()  # a request just after a boundary sees the new epoch
        epochs = tuple(
            protocol.FleetEpoch(epoch, dict(zip(FLEET_NAMES, sketches, strict=True)))
            for epoch, sketches in fleet.snapshot()
        )
        return protocol.FleetReply(fleet.epoch_seconds, epochs)


def _columns(
    message: protocol.Record | protocol.RecordColumns,
) -> tuple[Sequence[str | None], Sequence[str | None]]:
    """A record's values as two columns, the form the tracker counts."""
    if isinstance(message, protocol.RecordColumns):
        return message.conn_ips, message.senders
    if not message.pairs:
        return (), ()
    conn_ips, senders = zip(*message.pairs, strict=True)
    return conn_ips, senders
