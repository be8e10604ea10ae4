"""The trackerd wire protocol, sans-IO: messages, encoding, an incremental decoder, limits.

Nothing here touches a socket. Bytes go into ``MessageDecoder.receive_data()``,
messages come out of ``next_message()``; ``encode(message)`` returns bytes to send.
The daemon and every client drive this one module, so they cannot disagree.
docs/protocol.md is the normative description for implementations in other languages.

A frame is a 4-byte big-endian length N followed by N bytes of one msgpack array:
``[version, type, *fields]``.
"""

from __future__ import annotations

import array
import enum
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack

# The error codes of Error messages, as protocol.ERR_*: written in error_codes.py, which
# status.py imports (it cannot import this module, which imports it).
from servertracker.error_codes import ERR_BAD_MESSAGE as ERR_BAD_MESSAGE
from servertracker.error_codes import ERR_BAD_MSGPACK as ERR_BAD_MSGPACK
from servertracker.error_codes import ERR_BUSY as ERR_BUSY
from servertracker.error_codes import ERR_EMPTY_FRAME as ERR_EMPTY_FRAME
from servertracker.error_codes import ERR_FLEET_OFF as ERR_FLEET_OFF
from servertracker.error_codes import ERR_FORBIDDEN as ERR_FORBIDDEN
from servertracker.error_codes import ERR_TOO_LARGE as ERR_TOO_LARGE
from servertracker.error_codes import ERR_TRUNCATED as ERR_TRUNCATED
from servertracker.error_codes import ERR_UNEXPECTED as ERR_UNEXPECTED
from servertracker.error_codes import ERR_UNKNOWN_TYPE as ERR_UNKNOWN_TYPE
from servertracker.error_codes import ERR_UNSUPPORTED_VERSION as ERR_UNSUPPORTED_VERSION
from servertracker.errors import LocalProtocolError, ProtocolError
from servertracker.status import Status

PROTOCOL_VERSION: Final = 1

#: Largest frame body accepted, in bytes. Bounds the decoder's memory per connection.
MAX_MESSAGE_SIZE: Final = 1024 * 1024
#: Most (conn_ip, sender) pairs in one record message.
MAX_PAIRS_PER_MESSAGE: Final = 65536
#: Longer record values are malformed (counted as rejected, never as a server).
#: An RFC 5321 path is at most 256 octets; this leaves room for sloppy senders.
MAX_VALUE_LENGTH: Final = 512
#: Longest error message text sent or accepted, in characters.
MAX_ERROR_TEXT: Final = 512

#: Most entries a client may ask for in EACH of its two interned tables (connection
#: IPs, senders); ids run from 0 to granted - 1.
MAX_INTERN_ENTRIES: Final = 1 << 20
#: The reference meaning "not known" in an interned message (as nil in columns).
INTERNED_NIL: Final = 0xFFFFFFFF
#: Bytes per reference in an interned message: a little-endian uint32.
INTERNED_REF_SIZE: Final = 4

_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size


#: Size of one fleet sketch: a dense Redis HyperLogLog string (16-byte header and
#: 16,384 six-bit registers), as trackerd/core/fleet_sketch.py makes it.
FLEET_SKETCH_SIZE: Final = 12304
#: The fleet reply carries at most the current and the previous epoch.
MAX_FLEET_EPOCHS: Final = 2
#: At most this many sketches (categories) in one epoch of a fleet reply.
MAX_FLEET_SKETCHES: Final = 8

#: A pair as it comes off the wire: a two-element list of str or None.
Pair: TypeAlias = Sequence[str | None]


@dataclass(frozen=True, slots=True)
class Record:
    """One or many (conn_ip, sender) pairs. No reply."""

    pairs: Sequence[Pair]


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """Many pairs as two columns: (conn_ips[i], senders[i]) is pair i. No reply.

    Means exactly what Record of those pairs means; it costs the daemon less (no
    array per pair, and the columns are what its hot loop takes). Sent only to a
    daemon whose Features list FEATURE_COLUMNS.
    """

    conn_ips: Sequence[str | None]
    senders: Sequence[str | None]


@dataclass(frozen=True, slots=True)
class InternRequest:
    """Ask, once per connection, for two value tables of entries ids each (connection
    IPs, senders). Reply: InternReply. Sent only to a daemon listing FEATURE_INTERNED."""

    entries: int


@dataclass(frozen=True, slots=True)
class InternReply:
    """The ids granted in each table, 0 to the entries asked: 0 means send columns."""

    granted: int


#: References as they travel: N little-endian uint32 (INTERNED_NIL or an id). The
#: encoder also takes array('I'); the decoder returns bytes, never one int per ref.
Refs: TypeAlias = "bytes | bytearray | memoryview | array.array[int]"


@dataclass(frozen=True, slots=True)
class RecordInterned:
    """Many pairs as references into the connection's two value tables. No reply.

    ip_new[i] defines id ip_first + i of the connection-IP table (sender_* likewise),
    applied before the references are resolved; pair i is (the value of ip_refs[i],
    the value of sender_refs[i]). The decoder checks shapes only: what the ids name
    is the daemon's to check against its tables (docs/protocol.md, "interned").
    """

    ip_first: int
    ip_new: Sequence[str]
    ip_refs: bytes
    sender_first: int
    sender_new: Sequence[str]
    sender_refs: bytes

    @property
    def count(self) -> int:
        """The number of pairs (N)."""
        return len(self.ip_refs) // INTERNED_REF_SIZE


@dataclass(frozen=True, slots=True)
class FeaturesRequest:
    """Ask which additions to version 1 the daemon understands. Reply: Features."""


@dataclass(frozen=True, slots=True)
class Features:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Ask for the current Status. Reply: StatusReply."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness check. Reply: Pong."""


@dataclass(frozen=True, slots=True)
class StatusReply:
    status: Status


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class FleetRequest:
    """Ask for the fleet sketches (docs/fleet.md). Reply: FleetReply."""


@dataclass(frozen=True, slots=True)
class FleetEpoch:
    """One epoch's sketches: status field name -> dense Redis HyperLogLog string."""

    epoch: int
    sketches: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class FleetReply:
    """The current epoch's sketches first, then the previous epoch's if kept."""

    epoch_seconds: int
    epochs: tuple[FleetEpoch, ...]


@dataclass(frozen=True, slots=True)
class Error:
    """Sent by the daemon just before it closes a connection that sent garbage."""

    code: str
    message: str


Message: TypeAlias = (
    Record
    | RecordColumns
    | RecordInterned
    | InternRequest
    | InternReply
    | FeaturesRequest
    | Features
    | StatusRequest
    | Ping
    | StatusReply
    | Pong
    | Error
    | FleetRequest
    | FleetReply
)

#: The "columns" message (RecordColumns) is understood.
FEATURE_COLUMNS: Final = "columns"
#: The "intern" request and the "interned" message (RecordInterned) are understood
#: (the daemon may still grant 0 ids). Listed only when the daemon's
#: --max-interned-entries lets it grant ids.
FEATURE_INTERNED: Final = "interned"
#: Fleet mode is on: a FleetRequest gets a FleetReply, not the error "fleet-off".
#: Listed only then, as SMTP's EHLO lists only the extensions configured.
FEATURE_FLEET: Final = "fleet"
#: What a daemon lists by default beyond the messages every version-1 daemon knows
#: (it drops FEATURE_INTERNED when it can grant no ids, adds FEATURE_FLEET in fleet mode).
FEATURES: Final = (FEATURE_COLUMNS, FEATURE_INTERNED)
#: Most feature names in a Features reply, and the longest name.
MAX_FEATURES: Final = 64


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``next_message()`` needs more bytes before it can return a message.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: The peer closed the connection cleanly, on a frame boundary.
CLOSED: Final = _Sentinel("CLOSED")


# --- encoding -----------------------------------------------------------------

_packer_default = msgpack.Packer(autoreset=True, use_bin_type=True)


def _frame(body: bytes) -> bytes:
    if len(body) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(
            f"message of {len(body)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}"
        )
    return _HEADER.pack(len(body)) + body


def encode_records(pairs: Sequence[Pair]) -> bytes:
    """Encode a record message; the client's hot path, so it skips per-pair checks.

    Callers pass str or None values; anything else raises LocalProtocolError
    (msgpack would refuse it or the daemon would reject the whole message).
    """
    if len(pairs) > MAX_PAIRS_PER_MESSAGE:
        raise LocalProtocolError(f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message")
    try:
        body = _packer_default.pack([PROTOCOL_VERSION, "record", pairs])
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode record: {exc}") from None
    return _frame(body)


def encode_records_split(pairs: Sequence[Pair], max_pairs: int = 4096) -> list[bytes]:
    """Encode any number of pairs as record frames, each within the protocol's limits.

    A chunk that encodes too large is halved until it fits; a single pair too large
    for any frame raises LocalProtocolError.
    """
    frames: list[bytes] = []
    pending = [pairs[i : i + max_pairs] for i in range(0, len(pairs), max_pairs)]
    pending.reverse()
    while pending:
        chunk = pending.pop()
        try:
            frames.append(encode_records(chunk))
        except LocalProtocolError:
            if len(chunk) <= 1:
                raise
            half = len(chunk) // 2
            pending += [chunk[half:], chunk[:half]]
    return frames


def encode_columns(conn_ips: Sequence[str | None], senders: Sequence[str | None]) -> bytes:
    """Encode a columns message (RecordColumns); the client's hot path, as encode_records."""
    if len(conn_ips) != len(senders) or not conn_ips:
        raise LocalProtocolError("columns must be of equal length, at least 1")
    if len(conn_ips) > MAX_PAIRS_PER_MESSAGE:
        raise LocalProtocolError(f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message")
    try:
        body = _packer_default.pack([PROTOCOL_VERSION, "columns", conn_ips, senders])
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode record: {exc}") from None
    return _frame(body)


def encode_columns_split(
    conn_ips: Sequence[str | None], senders: Sequence[str | None], max_pairs: int = 4096
) -> list[bytes]:
    """Encode any number of pairs, given as columns, as columns frames within the limits.

    As encode_records_split: a chunk that encodes too large is halved until it fits.
    """
    frames: list[bytes] = []
    pending = [(start, min(len(conn_ips), start + max_pairs))
               for start in range(0, len(conn_ips), max_pairs)]  # fmt: skip
    pending.reverse()
    while pending:
        start, end = pending.pop()
        try:
            frames.append(encode_columns(conn_ips[start:end], senders[start:end]))
        except LocalProtocolError:
            if end - start <= 1:
                raise
            half = (start + end) // 2
            pending += [(half, end), (start, half)]
    return frames


def _little_endian_refs(refs: Refs) -> bytes | bytearray | memoryview:
    if isinstance(refs, array.array):
        if refs.itemsize != INTERNED_REF_SIZE:
            raise LocalProtocolError("interned references must be 4-byte unsigned ints")
        if sys.byteorder == "big":  # pragma: no cover - no big-endian machine here
            refs = array.array(refs.typecode, refs)
            refs.byteswap()
        return memoryview(refs).cast("B")
    return refs


def encode_interned(
    ip_first: int,
    ip_new: Sequence[str],
    ip_refs: Refs,
    sender_first: int,
    sender_new: Sequence[str],
    sender_refs: Refs,
) -> bytes:
    """Encode an interned message from already-numbered parts; a flusher's hot path.

    refs are N little-endian uint32 (bytes) or array('I') of N ids (INTERNED_NIL for
    "not known"). Only the shape is checked here, in O(1) besides msgpack's own pass:
    which ids are defined is for the caller to keep right (the daemon refuses a
    message that gets it wrong, and nothing of it counts).
    """
    ip_bin = _little_endian_refs(ip_refs)
    sender_bin = _little_endian_refs(sender_refs)
    size = len(ip_bin)
    if size != len(sender_bin) or size % INTERNED_REF_SIZE or not size:
        raise LocalProtocolError("interned references must be two equal, non-empty uint32 runs")
    if size > MAX_PAIRS_PER_MESSAGE * INTERNED_REF_SIZE:
        raise LocalProtocolError(f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message")
    for first, new in ((ip_first, ip_new), (sender_first, sender_new)):
        if first < 0 or first + len(new) > MAX_INTERN_ENTRIES:
            raise LocalProtocolError("interned ids beyond the largest table")
    body = [PROTOCOL_VERSION, "interned", ip_first, ip_new, ip_bin,
            sender_first, sender_new, sender_bin]  # fmt: skip
    try:
        packed = _packer_default.pack(body)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode record: {exc}") from None
    return _frame(packed)


def encode(message: Message) -> bytes:
    """Encode any message as one frame."""
    if isinstance(message, Record):
        return encode_records(message.pairs)
    if isinstance(message, RecordColumns):
        return encode_columns(message.conn_ips, message.senders)
    if isinstance(message, RecordInterned):
        return encode_interned(
            message.ip_first, message.ip_new, message.ip_refs,
            message.sender_first, message.sender_new, message.sender_refs,
        )  # fmt: skip
    body: list[Any]
    if isinstance(message, InternRequest):
        body = [PROTOCOL_VERSION, "intern", message.entries]
    elif isinstance(message, InternReply):
        body = [PROTOCOL_VERSION, "intern", message.granted]
    elif isinstance(message, FeaturesRequest):
        body = [PROTOCOL_VERSION, "features"]
    elif isinstance(message, Features):
        body = [PROTOCOL_VERSION, "features", list(message.names)]
    elif isinstance(message, StatusRequest):
        body = [PROTOCOL_VERSION, "status"]
    elif isinstance(message, Ping):
        body = [PROTOCOL_VERSION, "ping"]
    elif isinstance(message, Pong):
        body = [PROTOCOL_VERSION, "pong"]
    elif isinstance(message, StatusReply):
        body = [PROTOCOL_VERSION, "status", message.status.to_dict()]
    elif isinstance(message, Error):
        body = [PROTOCOL_VERSION, "error", message.code, message.message[:MAX_ERROR_TEXT]]
    elif isinstance(message, FleetRequest):
        body = [PROTOCOL_VERSION, "fleet"]
    elif isinstance(message, FleetReply):
        epochs = [{"epoch": e.epoch, "sketches": dict(e.sketches)} for e in message.epochs]
        fields = {"epoch_seconds": message.epoch_seconds, "epochs": epochs}
        body = [PROTOCOL_VERSION, "fleet", fields]
    else:
        raise LocalProtocolError(f"not a protocol message: {message!r}")
    return _frame(_packer_default.pack(body))


# --- decoding -----------------------------------------------------------------
#
# A body is read in two passes. The first skips the whole value without building
# anything: it must be exactly one well-formed msgpack value (else bad-msgpack).
# The second builds only the defined fields, front to back, and stops there:
# elements after them are never built, so an ignored element costs no memory
# and its content (map keys of any type, say) is not checked. Wherever a field
# could hide a large tree of small objects (a record's pairs), each array is
# checked as it is built, so decoding allocates at most what a valid message of
# the same size would (docs/protocol.md, "Limits").


class Peer(enum.Enum):
    """Who sent the bytes a decoder reads: a type name means a request from a
    client and a reply from the daemon ("status"), so each decoder reads one side."""

    CLIENT = "client"  # the daemon's decoders
    DAEMON = "daemon"  # the clients' decoders


# Every text a decoder can put in a ProtocolError: fixed, so that none can echo
# what a peer sent (a length, a version number, a type name could each carry a
# value). ERROR_TEXTS holds them all; the tests check that nothing else appears.
TEXT_TOO_LARGE: Final = "the frame header announces more than the size limit"
TEXT_EMPTY_FRAME: Final = "empty frame"
TEXT_TRUNCATED_HEADER: Final = "connection closed inside a frame header"
TEXT_TRUNCATED: Final = "connection closed inside a frame"
TEXT_BAD_MSGPACK: Final = "the body is not exactly one well-formed msgpack value"
TEXT_BAD_UTF8: Final = "a string is not valid UTF-8"
TEXT_NOT_AN_ARRAY: Final = "a message must be an array [version, type, ...]"
TEXT_BAD_VERSION: Final = "the version must be an integer"
TEXT_UNSUPPORTED_VERSION: Final = (
    f"protocol version not supported (this side speaks {PROTOCOL_VERSION})"
)
TEXT_BAD_TYPE: Final = "the message type must be a string"
TEXT_UNKNOWN_TYPE: Final = "unknown message type"
TEXT_NO_PAIRS: Final = "record needs its pairs"
TEXT_PAIRS_NOT_ARRAY: Final = "record pairs must be an array"
TEXT_TOO_MANY_PAIRS: Final = f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message"
TEXT_BAD_PAIR: Final = "each pair must be an array of two elements, each a string or nil"
TEXT_UNEXPECTED: Final = "this side may not receive this message"
TEXT_NO_STATUS: Final = "a status reply needs its fields"
TEXT_BAD_STATUS: Final = "invalid status fields"
TEXT_BAD_ERROR: Final = "error needs a code and a message, both strings"
TEXT_BAD_FLEET: Final = "invalid fleet reply"
TEXT_FLEET_OFF: Final = "fleet mode is off (trackerd has no --fleet-key-file)"
TEXT_BAD_COLUMNS: Final = (
    f"columns needs two arrays of equal length, 1 to {MAX_PAIRS_PER_MESSAGE} strings or nil"
)
TEXT_BAD_FEATURES: Final = (
    f"features needs an array of at most {MAX_FEATURES} strings of {MAX_FEATURES} characters"
)
TEXT_BAD_INTERN: Final = f"intern needs a table size, an integer from 1 to {MAX_INTERN_ENTRIES}"
TEXT_BAD_INTERN_REPLY: Final = (
    f"an intern reply needs the size granted, an integer from 0 to {MAX_INTERN_ENTRIES}"
)
TEXT_BAD_INTERNED: Final = (
    "interned needs, for each column, a first id, an array of new strings and a bin of"
    f" 4-byte references; both bins of 1 to {MAX_PAIRS_PER_MESSAGE} references, equally long"
)
# The daemon's own checks of an interned message against the connection's tables
# (trackerd/core/value_table.py): sent as bad-message, fixed texts as all others.
TEXT_SECOND_INTERN: Final = "intern may be asked only once per connection"
TEXT_INTERNED_NO_GRANT: Final = "interned sent on a connection that was granted no table"
TEXT_INTERNED_RANGE: Final = "an interned id is beyond the table granted"
TEXT_INTERNED_UNDEFINED: Final = "an interned reference names an id not defined on this connection"
TEXT_INTERNED_UNREFERENCED: Final = "an interned definition is not referenced by its message"
ERROR_TEXTS: Final = frozenset(
    value for name, value in list(globals().items()) if name.startswith("TEXT_")
)

# First bytes of msgpack types (the msgpack spec's format table).
_ARRAY_HEADERS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
_INT_HEADERS = frozenset([*range(0x00, 0x80), *range(0xCC, 0xD4), *range(0xE0, 0x100)])
_STR_HEADERS = frozenset([*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB])
#: Bounds for what a daemon's reply may hold (a status map, its "estimated" list).
_MAX_REPLY_CONTAINER = 1024


class _Refused(Exception):
    """Raised from inside msgpack's hooks to stop building at once."""

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text


class _PairCheck:
    """msgpack list_hook for a record's pairs: each array is checked as it is built.

    Arrays shaped as pairs pass; one other array may pass (the pairs array
    itself, built last); a second one means the value is not a list of pairs,
    and building stops there, before a hostile tree of arrays is built whole.
    """

    __slots__ = ("max_others", "others", "pairs")

    def __init__(self) -> None:
        self.pairs = 0
        self.others = 0
        #: Arrays other than pairs that may be built: 2 for a columns message.
        self.max_others = 1

    def __call__(self, items: list[Any]) -> list[Any]:
        if len(items) == 2:
            a, b = items
            if (a is None or type(a) is str) and (b is None or type(b) is str):
                self.pairs += 1
                if self.pairs > MAX_PAIRS_PER_MESSAGE:
                    raise _Refused(ERR_BAD_MESSAGE, TEXT_TOO_MANY_PAIRS)
                return items
        self.others += 1
        if self.others > self.max_others:
            raise _Refused(ERR_BAD_MESSAGE, TEXT_BAD_PAIR)
        return items


def _no_map(_: object) -> object:
    raise _Refused(ERR_BAD_MESSAGE, TEXT_BAD_PAIR)


def _check_well_formed(body: bytes | bytearray) -> None:
    skipper = msgpack.Unpacker(max_buffer_size=max(len(body), 1))
    skipper.feed(body)
    try:
        skipper.skip()
    except (ValueError, msgpack.UnpackException):
        # Invalid type bytes, a value cut short, nesting deeper than msgpack allows.
        raise ProtocolError(ERR_BAD_MSGPACK, TEXT_BAD_MSGPACK) from None
    if skipper.tell() != len(body):
        raise ProtocolError(ERR_BAD_MSGPACK, TEXT_BAD_MSGPACK)


class _FieldReader:
    """Reads the defined fields of one well-formed body, building nothing else."""

    def __init__(self, body: bytes | bytearray, sent_by: Peer) -> None:
        self._body = body
        self.pair_check = _PairCheck()
        if sent_by is Peer.CLIENT:
            # A client's defined fields hold no map, bin or ext, and no array
            # longer than a record's pairs.
            self._unpacker = msgpack.Unpacker(
                raw=False,
                max_buffer_size=max(len(body), 1),
                max_array_len=MAX_PAIRS_PER_MESSAGE,
                max_map_len=0,
                # An interned message's references; a bin elsewhere is refused by
                # the field's own type check (bounded by the frame's size).
                max_bin_len=MAX_PAIRS_PER_MESSAGE * INTERNED_REF_SIZE,
                max_ext_len=0,
                list_hook=self.pair_check,
                object_hook=_no_map,
            )
        else:
            self._unpacker = msgpack.Unpacker(
                raw=False,
                max_buffer_size=max(len(body), 1),
                max_array_len=_MAX_REPLY_CONTAINER,
                max_map_len=_MAX_REPLY_CONTAINER,
                max_bin_len=FLEET_SKETCH_SIZE,  # a fleet reply's sketches
                max_ext_len=0,
            )
        self._unpacker.feed(body)

    def next_byte(self) -> int:
        """The first byte of the next value (the body is known to hold it)."""
        return self._body[self._unpacker.tell()]

    def next_array_length(self) -> int:
        """The length of the array that comes next, read from its header alone."""
        at = self._unpacker.tell()
        first = self._body[at]
        if first == 0xDC:
            return int.from_bytes(self._body[at + 1 : at + 3], "big")
        if first == 0xDD:
            return int.from_bytes(self._body[at + 1 : at + 5], "big")
        return first & 0x0F  # fixarray

    def array_header(self) -> int:
        length: int = self._unpacker.read_array_header()
        return length

    def value(self, code: str, text: str) -> Any:
        """Build the next value; a limit or hook refusing it raises (code, text)."""
        try:
            return self._unpacker.unpack()
        except _Refused as exc:
            raise ProtocolError(exc.code, exc.text) from None
        except UnicodeDecodeError:
            raise ProtocolError(ERR_BAD_MSGPACK, TEXT_BAD_UTF8) from None
        except ValueError:  # a limit: an array, map, bin or ext where none may be
            raise ProtocolError(code, text) from None


def _bad(text: str) -> ProtocolError:
    return ProtocolError(ERR_BAD_MESSAGE, text)


def decode_body(body: bytes | bytearray, sent_by: Peer = Peer.CLIENT) -> Message:
    """Decode one frame body (without its length header), as sent by sent_by.

    Raises ProtocolError with a fixed text (one of ERROR_TEXTS).
    """
    _check_well_formed(body)
    reader = _FieldReader(body, sent_by)
    if reader.next_byte() not in _ARRAY_HEADERS:
        raise _bad(TEXT_NOT_AN_ARRAY)
    length = reader.array_header()
    if length < 2:
        raise _bad(TEXT_NOT_AN_ARRAY)
    if reader.next_byte() not in _INT_HEADERS:
        raise _bad(TEXT_BAD_VERSION)
    if reader.value(ERR_BAD_MESSAGE, TEXT_BAD_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(ERR_UNSUPPORTED_VERSION, TEXT_UNSUPPORTED_VERSION)
    if reader.next_byte() not in _STR_HEADERS:
        raise _bad(TEXT_BAD_TYPE)
    kind = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_TYPE)
    # Elements after the defined fields are ignored: room for compatible additions.
    if sent_by is Peer.CLIENT:
        return _client_message(kind, length, reader)
    return _daemon_message(kind, length, reader)


def _client_message(kind: str, length: int, reader: _FieldReader) -> Message:
    if kind == "record":
        if length < 3:
            raise _bad(TEXT_NO_PAIRS)
        if reader.next_byte() not in _ARRAY_HEADERS:
            raise _bad(TEXT_PAIRS_NOT_ARRAY)
        if reader.next_array_length() > MAX_PAIRS_PER_MESSAGE:
            raise _bad(TEXT_TOO_MANY_PAIRS)
        pairs = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_PAIR)
        # Every array built was a pair but the pairs array itself (see _PairCheck).
        if reader.pair_check.others != 1 or reader.pair_check.pairs != len(pairs):
            raise _bad(TEXT_BAD_PAIR)
        return Record(pairs)
    if kind == "columns":
        return _columns(length, reader)
    if kind == "interned":
        return _interned(length, reader)
    if kind == "intern":
        entries = _int_field(length, reader, TEXT_BAD_INTERN)
        if not 1 <= entries <= MAX_INTERN_ENTRIES:
            raise _bad(TEXT_BAD_INTERN)
        return InternRequest(entries)
    if kind == "features":
        return FeaturesRequest()
    if kind == "status":
        return StatusRequest()
    if kind == "ping":
        return Ping()
    if kind == "fleet":
        return FleetRequest()
    if kind in ("pong", "error"):
        raise ProtocolError(ERR_UNEXPECTED, TEXT_UNEXPECTED)
    # The type is not echoed: whatever a peer sends could be a cleartext value.
    raise ProtocolError(ERR_UNKNOWN_TYPE, TEXT_UNKNOWN_TYPE)


_STR_OR_NIL: Final = frozenset((str, type(None)))


def _columns(length: int, reader: _FieldReader) -> RecordColumns:
    if length < 4:
        raise _bad(TEXT_BAD_COLUMNS)
    reader.pair_check.max_others = 2  # the two columns themselves
    columns = []
    for _ in range(2):
        if reader.next_byte() not in _ARRAY_HEADERS:
            raise _bad(TEXT_BAD_COLUMNS)
        if not 0 < reader.next_array_length() <= MAX_PAIRS_PER_MESSAGE:
            raise _bad(TEXT_BAD_COLUMNS)
        column = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_COLUMNS)
        # One C loop over the types, not a Python loop over the values.
        if not _STR_OR_NIL.issuperset(map(type, column)):
            raise _bad(TEXT_BAD_COLUMNS)
        columns.append(column)
    if len(columns[0]) != len(columns[1]):
        raise _bad(TEXT_BAD_COLUMNS)
    return RecordColumns(*columns)


def _int_field(length: int, reader: _FieldReader, text: str) -> int:
    """The next field, which must be an integer (not a bool, not a float)."""
    if length < 3 or reader.next_byte() not in _INT_HEADERS:
        raise _bad(text)
    value: int = reader.value(ERR_BAD_MESSAGE, text)
    return value


_STR_ONLY: Final = frozenset((str,))
_BIN_HEADERS = frozenset((0xC4, 0xC5, 0xC6))


def _interned(length: int, reader: _FieldReader) -> RecordInterned:
    if length < 8:
        raise _bad(TEXT_BAD_INTERNED)
    reader.pair_check.max_others = 2  # the two arrays of new values
    fields: list[Any] = []
    for _ in range(2):
        if reader.next_byte() not in _INT_HEADERS:
            raise _bad(TEXT_BAD_INTERNED)
        first = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_INTERNED)
        if not 0 <= first <= MAX_INTERN_ENTRIES:
            raise _bad(TEXT_BAD_INTERNED)
        if reader.next_byte() not in _ARRAY_HEADERS:
            raise _bad(TEXT_BAD_INTERNED)
        new = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_INTERNED)
        # One C loop over the types: strings only, no nil (an id is a value).
        if first + len(new) > MAX_INTERN_ENTRIES or not _STR_ONLY.issuperset(map(type, new)):
            raise _bad(TEXT_BAD_INTERNED)
        if reader.next_byte() not in _BIN_HEADERS:
            raise _bad(TEXT_BAD_INTERNED)
        # bytes, copied out of the frame: the daemon reads it with one np.frombuffer.
        refs = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_INTERNED)
        count, odd = divmod(len(refs), INTERNED_REF_SIZE)
        # Each definition is referenced at least once, so there are no more than refs.
        if odd or not 0 < count <= MAX_PAIRS_PER_MESSAGE or len(new) > count:
            raise _bad(TEXT_BAD_INTERNED)
        fields += (first, new, refs)
    if len(fields[2]) != len(fields[5]):
        raise _bad(TEXT_BAD_INTERNED)
    return RecordInterned(*fields)


def _features(length: int, reader: _FieldReader) -> Features:
    if length < 3 or reader.next_byte() not in _ARRAY_HEADERS:
        raise _bad(TEXT_BAD_FEATURES)
    names = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_FEATURES)
    if len(names) > MAX_FEATURES or not all(
        type(name) is str and len(name) <= MAX_FEATURES for name in names
    ):
        raise _bad(TEXT_BAD_FEATURES)
    return Features(tuple(names))


def _daemon_message(kind: str, length: int, reader: _FieldReader) -> Message:
    if kind == "status":
        if length < 3:
            raise _bad(TEXT_NO_STATUS)
        fields = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_STATUS)
        if type(fields) is not dict:
            raise _bad(TEXT_BAD_STATUS)
        try:
            return StatusReply(Status.from_dict(fields))
        except ValueError:
            raise _bad(TEXT_BAD_STATUS) from None
    if kind == "pong":
        return Pong()
    if kind == "fleet":
        if length < 3:
            raise _bad(TEXT_BAD_FLEET)
        return _fleet_reply(reader.value(ERR_BAD_MESSAGE, TEXT_BAD_FLEET))
    if kind == "features":
        return _features(length, reader)
    if kind == "intern":
        granted = _int_field(length, reader, TEXT_BAD_INTERN_REPLY)
        if not 0 <= granted <= MAX_INTERN_ENTRIES:
            raise _bad(TEXT_BAD_INTERN_REPLY)
        return InternReply(granted)
    if kind == "error":
        if length < 4:
            raise _bad(TEXT_BAD_ERROR)
        code = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_ERROR)
        text = reader.value(ERR_BAD_MESSAGE, TEXT_BAD_ERROR)
        if type(code) is not str or type(text) is not str:
            raise _bad(TEXT_BAD_ERROR)
        return Error(code[:64], text[:MAX_ERROR_TEXT])
    if kind in ("record", "columns", "interned", "ping"):
        raise ProtocolError(ERR_UNEXPECTED, TEXT_UNEXPECTED)
    raise ProtocolError(ERR_UNKNOWN_TYPE, TEXT_UNKNOWN_TYPE)


def _fleet_reply(fields: object) -> FleetReply:
    if type(fields) is not dict:
        raise _bad(TEXT_BAD_FLEET)
    epoch_seconds, epochs = fields.get("epoch_seconds"), fields.get("epochs")
    if type(epoch_seconds) is not int or epoch_seconds < 1:
        raise _bad(TEXT_BAD_FLEET)
    if type(epochs) is not list or not 1 <= len(epochs) <= MAX_FLEET_EPOCHS:
        raise _bad(TEXT_BAD_FLEET)
    parsed = []
    for each in epochs:
        if type(each) is not dict or type(each.get("epoch")) is not int:
            raise _bad(TEXT_BAD_FLEET)
        sketches = each.get("sketches")
        if type(sketches) is not dict or len(sketches) > MAX_FLEET_SKETCHES:
            raise _bad(TEXT_BAD_FLEET)
        for name, sketch in sketches.items():
            if type(name) is not str or len(name) > 64:
                raise _bad(TEXT_BAD_FLEET)
            if type(sketch) is not bytes or len(sketch) != FLEET_SKETCH_SIZE:
                raise _bad(TEXT_BAD_FLEET)
            if sketch[:5] != b"HYLL\x00":  # a dense Redis HyperLogLog
                raise _bad(TEXT_BAD_FLEET)
        parsed.append(FleetEpoch(each["epoch"], sketches))
    return FleetReply(epoch_seconds, tuple(parsed))


class MessageDecoder:
    """Incremental decoder for one direction of one connection.

    Feed bytes with ``receive_data()`` (``b""`` means the peer closed), then call
    ``next_message()`` until it returns NEED_DATA. Once it has raised
    ProtocolError the decoder stays broken: the connection must be closed.
    Memory is bounded by max_message_size plus one read. No received byte is
    left behind in memory the decoder lets go: a frame's bytes are overwritten as
    soon as it is decoded, and so is the buffer's old storage when it grows
    (docs/threat-model.md).
    """

    def __init__(
        self, max_message_size: int = MAX_MESSAGE_SIZE, *, sent_by: Peer = Peer.CLIENT
    ) -> None:
        self._max = max_message_size
        self._sent_by = sent_by
        self._buffer = bytearray()
        # Received bytes not yet decoded are _buffer[_offset:_end]; the rest is zeros.
        self._offset = 0
        self._end = 0
        self._eof = False
        self._error: ProtocolError | None = None
        #: Frames taken from the stream so far, whole (decoded or refused).
        self.frames = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages: a frame is in progress."""
        return self._end - self._offset

    @property
    def next_frame_size(self) -> int:
        """The body size of the next frame if it has arrived whole, else 0: a server
        may wait for its turn before it decodes a large one."""
        available = self._end - self._offset - HEADER_SIZE
        if self._error is not None or available < 0:
            return 0
        (size,) = _HEADER.unpack_from(self._buffer, self._offset)
        return size if size <= min(available, self._max) else 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy data in (the caller may overwrite it afterwards)."""
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() after end of stream")
            return
        if not data:
            self._eof = True
            return
        self._buffer, self._offset, self._end = append_received(
            self._buffer, self._offset, self._end, data, self._max + HEADER_SIZE
        )

    def next_message(self) -> Message | _Sentinel:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> Message | _Sentinel:
        available = self._end - self._offset
        if available < HEADER_SIZE:
            if self._eof:
                if available:
                    raise ProtocolError(ERR_TRUNCATED, TEXT_TRUNCATED_HEADER)
                return CLOSED
            return NEED_DATA
        (size,) = _HEADER.unpack_from(self._buffer, self._offset)
        if size > self._max:
            # The size is not echoed: four bytes a peer chose could be an IPv4 address.
            raise ProtocolError(ERR_TOO_LARGE, TEXT_TOO_LARGE)
        if size == 0:
            raise ProtocolError(ERR_EMPTY_FRAME, TEXT_EMPTY_FRAME)
        end = self._offset + HEADER_SIZE + size
        if self._end < end:
            if self._eof:
                raise ProtocolError(ERR_TRUNCATED, TEXT_TRUNCATED)
            return NEED_DATA
        body = self._take_frame(end)
        try:
            return decode_body(body, self._sent_by)
        finally:
            body[:] = bytes(len(body))  # the decoded values are all that is left

    def _take_frame(self, end: int) -> bytearray:
        """A copy of the body of the frame ending at end; its bytes in the buffer are
        overwritten."""
        start = self._offset
        body = bytearray(memoryview(self._buffer)[start + HEADER_SIZE : end])
        # Cleartext lives no longer than its message (docs/threat-model.md): the
        # buffer may keep these bytes until the connection closes otherwise.
        self._buffer[start:end] = bytes(end - start)
        self._offset = end
        if self._offset == self._end:
            self._buffer, self._offset, self._end = emptied_buffer(self._buffer)
        self.frames += 1
        return body


#: A buffer emptied of received bytes is kept for the next ones up to this size.
KEEP_BUFFER = 4096


def append_received(
    buffer: bytearray, start: int, end: int, data: bytes | bytearray | memoryview, bound: int
) -> tuple[bytearray, int, int]:
    """buffer[start:end] followed by data, as (buffer, start, end).

    Room is made by moving the live bytes to a new buffer and overwriting the old
    one: a bytearray grown in place (+=) may be moved by realloc(), and the freed
    copy would keep what a peer sent. Shared by the policy decoder. Pure.
    """
    count = len(data)
    if end + count > len(buffer):
        live = end - start
        size = max(live + count, min(2 * (live + count), bound))
        grown = bytearray(size)
        grown[:live] = memoryview(buffer)[start:end]
        buffer[start:end] = bytes(live)
        buffer, start, end = grown, 0, live
    buffer[end : end + count] = data
    return buffer, start, end + count


def emptied_buffer(buffer: bytearray) -> tuple[bytearray, int, int]:
    """A buffer whose bytes were all consumed (and overwritten), ready to refill."""
    return (buffer if len(buffer) <= KEEP_BUFFER else bytearray()), 0, 0
