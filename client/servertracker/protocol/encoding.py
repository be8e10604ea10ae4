"""Encoding: every message to one frame, and record batches to frames within the
limits. Sans-IO.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from typing import Any

import msgpack

from servertracker import accel
from servertracker.errors import LocalProtocolError
from servertracker.protocol.messages import (
    _HEADER,
    INTERNED_REF_SIZE,
    MAX_ERROR_TEXT,
    MAX_INTERN_ENTRIES,
    MAX_MESSAGE_SIZE,
    MAX_PAIRS_PER_MESSAGE,
    PROTOCOL_VERSION,
    Error,
    Features,
    FeaturesRequest,
    FleetReply,
    FleetRequest,
    InternReply,
    InternRequest,
    Message,
    Pair,
    Ping,
    Pong,
    Record,
    RecordColumns,
    RecordInterned,
    Refs,
    StatusReply,
    StatusRequest,
)

_packer_default = msgpack.Packer(autoreset=True, use_bin_type=True)
#: The C twin of encode_columns()'s usual case (client/servertracker/_record_queue.c):
#: the same bytes, or None where this module's code decides (odd types, a value not
#: UTF-8, a message over the limits). None when not built (servertracker/accel.py).
_c_record_queue = accel.load("servertracker._record_queue")
_c_encode_columns = None if _c_record_queue is None else _c_record_queue.encode_columns


def _frame(body: bytes) -> bytes:
    if len(body) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(
            f"message of {len(body)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}"
        )
    return _HEADER.pack(len(body)) + body


_PAIR_TYPES = (tuple, list)


def _refuse_too_long(*columns: Sequence[object]) -> None:
    """Raise as _frame() would where the values' lengths alone exceed the largest
    message: UTF-8 takes at least a byte a character (as bytes a byte a byte), so
    this is a lower bound of the body. Checked before msgpack, which would first
    make a too-long value's UTF-8 (cached on the str for as long as it lives) and a
    buffer and a bytes object of the whole message; the C twin checks the same way
    (_record_queue.c, column_size) and leaves such a message to this code.
    """
    least = 0
    for column in columns:
        try:  # the usual column: str only, one C loop
            least += sum(map(len, column))  # type: ignore[arg-type]
        except TypeError:  # None (one byte), or a type msgpack decides on
            least += sum(len(v) for v in column if isinstance(v, (str, bytes, bytearray)))
    if least > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(
            f"message of at least {least} bytes exceeds the limit of {MAX_MESSAGE_SIZE}"
        )


def encode_records(pairs: Sequence[Pair]) -> bytes:
    """Encode a record message; the client's hot path, so it skips per-pair checks.

    Callers pass str or None values; anything else raises LocalProtocolError
    (msgpack would refuse it or the daemon would reject the whole message).
    """
    if len(pairs) > MAX_PAIRS_PER_MESSAGE:
        raise LocalProtocolError(f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message")
    # Pairs that are not sequences are left to msgpack (which refuses them).
    _refuse_too_long([v for pair in pairs if type(pair) in _PAIR_TYPES for v in pair])
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
    if _c_encode_columns is not None:
        frame: bytes | None = _c_encode_columns(conn_ips, senders)
        if frame is not None:
            return frame
    if len(conn_ips) != len(senders) or not conn_ips:
        raise LocalProtocolError("columns must be of equal length, at least 1")
    if len(conn_ips) > MAX_PAIRS_PER_MESSAGE:
        raise LocalProtocolError(f"more than {MAX_PAIRS_PER_MESSAGE} pairs in one message")
    _refuse_too_long(conn_ips, senders)
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
    _refuse_too_long(ip_new, sender_new)
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
