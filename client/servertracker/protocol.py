"""The trackerd wire protocol, sans-IO: messages, encoding, an incremental decoder, limits.

Nothing here touches a socket. Bytes go into ``MessageDecoder.receive_data()``,
messages come out of ``next_message()``; ``encode(message)`` returns bytes to send.
The daemon and every client drive this one module, so they cannot disagree.
docs/protocol.md is the normative description for implementations in other languages.

A frame is a 4-byte big-endian length N followed by N bytes of one msgpack array:
``[version, type, *fields]``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack

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

_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size

# Error codes carried in Error messages (docs/protocol.md lists them).
ERR_TOO_LARGE: Final = "too-large"
ERR_EMPTY_FRAME: Final = "empty-frame"
ERR_BAD_MSGPACK: Final = "bad-msgpack"
ERR_BAD_MESSAGE: Final = "bad-message"
ERR_UNSUPPORTED_VERSION: Final = "unsupported-version"
ERR_UNKNOWN_TYPE: Final = "unknown-type"
ERR_TRUNCATED: Final = "truncated"
ERR_UNEXPECTED: Final = "unexpected-message"
ERR_FLEET_OFF: Final = "fleet-off"

#: Size of one fleet sketch: a dense Redis HyperLogLog string (16-byte header and
#: 16,384 six-bit registers), as trackerd/core/fleet_sketch.py makes it.
FLEET_SKETCH_SIZE: Final = 12304
#: The fleet reply carries at most the current and the previous epoch.
MAX_FLEET_EPOCHS: Final = 2

#: A pair as it comes off the wire: a two-element list of str or None.
Pair: TypeAlias = Sequence[str | None]


@dataclass(frozen=True, slots=True)
class Record:
    """One or many (conn_ip, sender) pairs. No reply."""

    pairs: Sequence[Pair]


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
    Record | StatusRequest | Ping | StatusReply | Pong | Error | FleetRequest | FleetReply
)


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


def encode(message: Message) -> bytes:
    """Encode any message as one frame."""
    if isinstance(message, Record):
        return encode_records(message.pairs)
    body: list[Any]
    if isinstance(message, StatusRequest):
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


def _bad(text: str) -> ProtocolError:
    return ProtocolError(ERR_BAD_MESSAGE, text)


def _validate_pairs(pairs: object) -> Sequence[Pair]:
    if type(pairs) is not list:
        raise _bad("record pairs must be an array")
    if len(pairs) > MAX_PAIRS_PER_MESSAGE:
        raise _bad(f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message")
    for pair in pairs:
        # Exact type checks: the whole message is validated before any pair counts,
        # so an ill-typed message changes nothing.
        if type(pair) is not list or len(pair) != 2:
            raise _bad("each pair must be an array of two elements")
        a, b = pair
        if (a is not None and type(a) is not str) or (b is not None and type(b) is not str):
            raise _bad("pair elements must be strings or nil")
    return pairs


def _parse_fleet_reply(fields: object) -> FleetReply:
    if type(fields) is not dict:
        raise _bad("fleet fields must be a map")
    epoch_seconds, epochs = fields.get("epoch_seconds"), fields.get("epochs")
    if type(epoch_seconds) is not int or epoch_seconds < 1:
        raise _bad("fleet epoch_seconds must be a positive integer")
    if type(epochs) is not list or not 1 <= len(epochs) <= MAX_FLEET_EPOCHS:
        raise _bad(f"fleet epochs must be an array of 1 to {MAX_FLEET_EPOCHS} maps")
    parsed = []
    for each in epochs:
        if type(each) is not dict or type(each.get("epoch")) is not int:
            raise _bad("each fleet epoch must be a map with an integer epoch")
        sketches = each.get("sketches")
        if type(sketches) is not dict or len(sketches) > 8:
            raise _bad("fleet sketches must be a map of at most 8 entries")
        for name, sketch in sketches.items():
            if type(name) is not str or len(name) > 64:
                raise _bad("fleet sketch names must be short strings")
            if type(sketch) is not bytes or len(sketch) != FLEET_SKETCH_SIZE:
                raise _bad(f"each fleet sketch must be {FLEET_SKETCH_SIZE} bytes of binary")
            if sketch[:5] != b"HYLL\x00":
                raise _bad("each fleet sketch must be a dense Redis HyperLogLog")
        parsed.append(FleetEpoch(each["epoch"], sketches))
    return FleetReply(epoch_seconds, tuple(parsed))


def _parse_body(obj: object) -> Message:
    if type(obj) is not list or len(obj) < 2:
        raise _bad("a message must be an array [version, type, ...]")
    version, kind = obj[0], obj[1]
    if type(version) is not int:
        raise _bad("the version must be an integer")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ERR_UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})",
        )
    if type(kind) is not str:
        raise _bad("the message type must be a string")
    # Trailing elements beyond those defined are ignored: room for compatible additions.
    if kind == "record":
        if len(obj) < 3:
            raise _bad("record needs its pairs")
        return Record(_validate_pairs(obj[2]))
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "status":
        if len(obj) == 2:
            return StatusRequest()
        fields = obj[2]
        if type(fields) is not dict:
            raise _bad("status fields must be a map")
        try:
            return StatusReply(Status.from_dict(fields))
        except ValueError as exc:
            raise _bad(f"invalid status: {exc}") from None
    if kind == "fleet":
        return FleetRequest() if len(obj) == 2 else _parse_fleet_reply(obj[2])
    if kind == "error":
        if len(obj) < 4 or type(obj[2]) is not str or type(obj[3]) is not str:
            raise _bad("error needs a code and a message, both strings")
        return Error(obj[2][:64], obj[3][:MAX_ERROR_TEXT])
    # The type is not echoed: whatever a peer sends could be a cleartext value.
    raise ProtocolError(ERR_UNKNOWN_TYPE, "unknown message type")


def decode_body(body: bytes) -> Message:
    """Decode one frame body (without its length header)."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError) as exc:
        # Covers invalid msgpack, trailing bytes, bad UTF-8 and too-deep nesting.
        raise ProtocolError(ERR_BAD_MSGPACK, f"invalid msgpack: {type(exc).__name__}") from None
    return _parse_body(obj)


class MessageDecoder:
    """Incremental decoder for one direction of one connection.

    Feed bytes with ``receive_data()`` (``b""`` means the peer closed), then call
    ``next_message()`` until it returns NEED_DATA. Once it has raised
    ProtocolError the decoder stays broken: the connection must be closed.
    Memory is bounded by max_message_size plus one read.
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._max = max_message_size
        self._buffer = bytearray()
        self._offset = 0
        self._eof = False
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() after end of stream")
            return
        if not data:
            self._eof = True
            return
        if self._offset and self._offset >= len(self._buffer) // 2:
            # Compact only now and then, so a stream of small frames stays O(n).
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_message(self) -> Message | _Sentinel:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> Message | _Sentinel:
        available = len(self._buffer) - self._offset
        if available < HEADER_SIZE:
            if self._eof:
                if available:
                    raise ProtocolError(ERR_TRUNCATED, "connection closed inside a frame header")
                return CLOSED
            return NEED_DATA
        (size,) = _HEADER.unpack_from(self._buffer, self._offset)
        if size > self._max:
            raise ProtocolError(
                ERR_TOO_LARGE, f"frame of {size} bytes exceeds the limit of {self._max}"
            )
        if size == 0:
            raise ProtocolError(ERR_EMPTY_FRAME, "empty frame")
        end = self._offset + HEADER_SIZE + size
        if len(self._buffer) < end:
            if self._eof:
                raise ProtocolError(ERR_TRUNCATED, "connection closed inside a frame")
            return NEED_DATA
        body = bytes(self._buffer[self._offset + HEADER_SIZE : end])
        self._offset = end
        return decode_body(body)
