"""Decoding one frame body: decode_body(), the field reader that builds only a
message's defined fields, and Peer, the side that sent it. Sans-IO.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgpack

from servertracker.error_codes import (
    ERR_BAD_MESSAGE,
    ERR_BAD_MSGPACK,
    ERR_UNEXPECTED,
    ERR_UNKNOWN_TYPE,
    ERR_UNSUPPORTED_VERSION,
)
from servertracker.errors import ProtocolError
from servertracker.protocol.error_texts import (
    TEXT_BAD_COLUMNS,
    TEXT_BAD_ERROR,
    TEXT_BAD_FEATURES,
    TEXT_BAD_FLEET,
    TEXT_BAD_INTERN,
    TEXT_BAD_INTERN_REPLY,
    TEXT_BAD_INTERNED,
    TEXT_BAD_MSGPACK,
    TEXT_BAD_PAIR,
    TEXT_BAD_STATUS,
    TEXT_BAD_TYPE,
    TEXT_BAD_UTF8,
    TEXT_BAD_VERSION,
    TEXT_NO_PAIRS,
    TEXT_NO_STATUS,
    TEXT_NOT_AN_ARRAY,
    TEXT_PAIRS_NOT_ARRAY,
    TEXT_TOO_MANY_PAIRS,
    TEXT_UNEXPECTED,
    TEXT_UNKNOWN_TYPE,
    TEXT_UNSUPPORTED_VERSION,
)
from servertracker.protocol.messages import (
    FLEET_SKETCH_SIZE,
    INTERNED_REF_SIZE,
    MAX_ERROR_TEXT,
    MAX_FEATURES,
    MAX_FLEET_EPOCHS,
    MAX_FLEET_SKETCHES,
    MAX_INTERN_ENTRIES,
    MAX_PAIRS_PER_MESSAGE,
    PROTOCOL_VERSION,
    Error,
    Features,
    FeaturesRequest,
    FleetEpoch,
    FleetReply,
    FleetRequest,
    InternReply,
    InternRequest,
    Message,
    Ping,
    Pong,
    Record,
    RecordColumns,
    RecordInterned,
    StatusReply,
    StatusRequest,
)
from servertracker.status import Status

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
