"""How the flusher's batches go on the wire on one connection.

On a new connection, handshake() asks the daemon which record messages it takes
("features") and, when it lists "interned", for value tables ("intern"); the
BatchEncoder it returns turns each batch into frames of the best message the
daemon takes: "interned" (values numbered per connection, value_tables.py),
"columns", or "record" for a daemon older than both.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from servertracker import protocol
from servertracker.errors import ProtocolError
from servertracker.reachability import Refused
from servertracker.sender_split import sent_senders

if TYPE_CHECKING:
    from servertracker.value_tables import ValueTables

#: Ids a Client asks for in each of a connection's two value tables by default:
#: none, so it sends "columns" and never loads numpy. Measured with the C
#: extension (docs/performance-history.md, "The worker library in C" and "The
#: daemon's hot path in C"), a columns worker plus the daemon cost 1.5-2.6x less total
#: CPU a record than interned, the daemon's share no higher; interned workers
#: also load numpy and hold megabytes of tables, and their numbering holds the
#: interpreter lock longest. Tables stay a choice (SMTP_TABLE_ENTRIES,
#: BULK_TABLE_ENTRIES) for a host whose daemon core is the bottleneck.
DEFAULT_TABLE_ENTRIES: Final = 0
#: Tables sized for an SMTP worker that asks for them (many per host, each
#: holding its tables: 56 bytes an id, about 1.8 MB for both): a worker seeing up
#: to this many distinct connection IPs (and as many senders' domain parts) sends
#: each one's text once per connection, then 4 bytes a use.
SMTP_TABLE_ENTRIES: Final = 16_384
#: What README advises a process that imports a log (one process, many distinct
#: values): about 15 MB for both tables.
BULK_TABLE_ENTRIES: Final = 131_072
#: A grant below this (and below what was asked) is declined and columns sent:
#: a table holding fewer values than a few batches would redefine ids batch
#: after batch, costing the daemon more than columns do.
MIN_TABLE_ENTRIES: Final = 4096
#: A connection's tables start afresh at least this often, so that every value
#: in use is defined again within each half of fleet mode's default epoch (a
#: day): a reference to a value defined two epochs back counts everywhere but in
#: the fleet sketch (docs/protocol.md, "interned").
TABLE_LIFETIME: Final = 3600.0
#: A connection granted no ids though it asked (the daemon's budget was spent, or
#: the grant was declined) asks again, on a new connection, this often: the budget
#: comes back as other connections close. One granted some, but fewer than it
#: asked, asks again when its tables would start afresh anyway (TABLE_LIFETIME),
#: so asking costs it no table.
ASK_AGAIN: Final = 60.0
#: Records an interned batch takes from the queue (where the Client was given no
#: batch_size), against 512 for columns and record. The daemon spends about 170
#: numpy calls a message whatever its length, so an interned message of 512
#: pairs paid ~0.9 µs a record of daemon CPU and one of 2048 ~0.55
#: (bench.interned_cost --batch). Against it: numbering 2048 new values takes
#: the flusher milliseconds, so encode() offers it a pause between every few array
#: operations (``between``), where it lets go of the interpreter lock when it has
#: held it long (flusher.py's _LONG_HOLD; docs/performance.md).
INTERNED_BATCH_SIZE: Final = 2048


def _go_on() -> None:
    """The default ``between``: no pause."""


class BatchEncoder:
    """The frames for a batch on one connection, in the message it takes."""

    def __init__(self, message: str, table_entries: int = 0, asked: int = 0) -> None:
        #: "interned", "columns" or "record".
        self.message = message
        self.table_entries = table_entries
        #: The ids asked for in each table, from a daemon that lists "interned"
        #: (0: none asked). Granted fewer, the connection asks again (asks_again).
        self.asked = asked
        self._tables = _value_tables(table_entries) if message == "interned" else None
        self._born = time.monotonic()

    def batch_size(self, asked: int | None, default: int) -> int:
        """Records to take from the queue a batch: ``asked`` if the Client was
        given one, else INTERNED_BATCH_SIZE for interned, ``default`` otherwise."""
        if asked is not None:
            return asked
        return INTERNED_BATCH_SIZE if self.message == "interned" else default

    def asks_again(self) -> bool:
        """Whether to open a new connection, and ask for tables again, before the
        next batch: granted fewer ids than asked, and ASK_AGAIN (none granted) or
        TABLE_LIFETIME (some) has passed since this connection's tables began."""
        if self.table_entries >= self.asked:
            return False
        wait = TABLE_LIFETIME if self.table_entries else ASK_AGAIN
        return time.monotonic() - self._born > wait

    def forget(self) -> None:
        """Start the value tables afresh: later messages define ids anew."""
        if self._tables is not None:
            self._tables = _value_tables(self.table_entries)
            self._born = time.monotonic()

    def encode(
        self,
        conn_ips: list[str | None],
        senders: list[str | None],
        batch_size: int,
        between: Callable[[], object] = _go_on,
    ) -> tuple[list[bytes], list[int]]:
        """The frames that carry a batch, and the records up to each frame's end.

        ``between`` is called between the steps of an interned batch's encoding
        (value_tables.py), where the flusher may let go of the interpreter lock:
        so the worker's own thread never waits for it long (docs/performance.md).
        """
        if self._tables is not None:
            if time.monotonic() - self._born > TABLE_LIFETIME:
                self.forget()
            assert self._tables is not None
            # The daemon's rule gives a usual sender's domain part the same result
            # as the whole (sender_split.py): fewer values to number and send.
            messages = self._tables.messages(conn_ips, senders, between, sent_senders)
            frames = []
            for message in messages:
                frames.append(protocol.encode_interned(*message[2:]))
                between()
            return frames, [message[1] for message in messages]
        if self.message == "columns":
            frames = protocol.encode_columns_split(conn_ips, senders, batch_size)
        else:
            pairs = list(zip(conn_ips, senders, strict=True))
            frames = protocol.encode_records_split(pairs, batch_size)
        if len(frames) == 1:
            return frames, [len(senders)]
        # Rare (values too large for one frame): count what each frame holds.
        return frames, list(itertools.accumulate(map(_records_in_frame, frames)))


def load_value_tables() -> None:
    """Import value_tables.py, and so numpy: about 0.2 s of CPU, once a process.

    Client() calls it when it will ask for value tables, so that a process (or a
    pre-fork master, once for all its workers) pays it there and not in the
    flusher thread: imported there, it stalled the recording thread 60-100 times
    for up to 5 ms each, at least (docs/performance.md). Nothing else imports it
    just to record.
    """
    import servertracker.value_tables  # noqa: F401


def _value_tables(size: int) -> ValueTables:
    """A connection's value tables (value_tables.py loads numpy, if not done yet:
    load_value_tables())."""
    from servertracker.value_tables import ValueTables

    return ValueTables(size)


class OlderDaemon(Exception):
    """The daemon does not know the features request (an older trackerd)."""


class GrantDeclined(Exception):
    """The daemon granted fewer ids than MIN_TABLE_ENTRIES (and than were asked):
    close the connection, and open one that asks for none."""


def handshake(sock: socket.socket, table_entries: int) -> BatchEncoder:
    """Agree with the daemon on a new connection which record message to send.

    The encoder returned sends "interned", "columns" or "record". One round trip
    to ask for the daemon's features, and one more for its value tables when it
    lists "interned" and ``table_entries`` is not 0.
    Raises OSError when the daemon does not answer within the socket's timeout,
    OlderDaemon when it does not know the question, GrantDeclined when it grants
    too few ids to be worth using.
    """
    decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)
    reply = _ask(sock, decoder, protocol.FeaturesRequest())
    if not isinstance(reply, protocol.Features):
        raise OSError("trackerd closed the connection or answered out of turn")
    message = "columns" if protocol.FEATURE_COLUMNS in reply.names else "record"
    if not table_entries or protocol.FEATURE_INTERNED not in reply.names:
        return BatchEncoder(message)
    reply = _ask(sock, decoder, protocol.InternRequest(table_entries))
    if not isinstance(reply, protocol.InternReply):
        raise OSError("trackerd closed the connection or answered out of turn")
    if reply.granted and reply.granted < min(table_entries, MIN_TABLE_ENTRIES):
        # This connection would hold its grant, unused, against the budget all
        # connections share, until it closes: the caller opens another instead.
        raise GrantDeclined
    if not reply.granted:
        return BatchEncoder(message, asked=table_entries)
    return BatchEncoder("interned", reply.granted, asked=table_entries)


def _ask(
    sock: socket.socket, decoder: protocol.MessageDecoder, request: protocol.Message
) -> protocol.Message | protocol._Sentinel:
    """Send a request and read its reply; raise for an error reply (see handshake)."""
    send_failed: OSError | None = None
    try:
        sock.sendall(protocol.encode(request))
    except (BrokenPipeError, ConnectionResetError) as exc:
        send_failed = exc  # the daemon may have said why before it closed: read it
    while True:
        try:
            reply = decoder.next_message()
        except ProtocolError as exc:
            raise OSError(f"trackerd answered garbage ({exc.code})") from None
        if reply is protocol.NEED_DATA:
            try:
                data = sock.recv(65536)
            except OSError:
                if send_failed is not None:
                    raise send_failed from None
                raise
            decoder.receive_data(data)
            continue
        if isinstance(reply, protocol.Error) and reply.code == protocol.ERR_UNKNOWN_TYPE:
            raise OlderDaemon
        if isinstance(reply, protocol.Error):
            raise Refused(reply.code)
        if send_failed is not None:
            raise send_failed
        return reply


def _records_in_frame(frame: bytes) -> int:
    """The records a columns or record frame holds (rare: see BatchEncoder.encode)."""
    message = protocol.decode_body(frame[protocol.HEADER_SIZE :])
    if isinstance(message, protocol.RecordColumns):
        return len(message.conn_ips)
    assert isinstance(message, protocol.Record)
    return len(message.pairs)
