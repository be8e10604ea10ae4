"""The sans-IO decoder under attack: what it allocates, what it keeps, what it says.

Issue 12 §6 to §9: decoding memory is bounded whatever the frame's shape,
consumed bytes are not kept, error texts never echo input, and messages with
ignored elements decode as docs/protocol.md says.
"""

from __future__ import annotations

import struct
import sys
import tracemalloc
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import protocol
from servertracker.errors import LocalProtocolError, ProtocolError
from servertracker.protocol import encoding
from servertracker.status import Status
from trackerd.core.policy_protocol import NEED_DATA, PolicyDecoder

M = protocol.MAX_MESSAGE_SIZE
#: docs/protocol.md, "Limits": what decoding one frame may allocate at most. A
#: valid record of 65,536 pairs of two-character strings needs about 12 MiB.
DECODE_MEMORY_BOUND = 16 * 1024 * 1024


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    assert len(body) <= M
    return struct.pack(">I", len(body)) + body


def decode_one(data: bytes, sent_by: protocol.Peer = protocol.Peer.CLIENT) -> object:
    decoder = protocol.MessageDecoder(sent_by=sent_by)
    decoder.receive_data(data)
    return decoder.next_message()


# --- §9: what the document says, the decoder does ---------------------------------------


def test_a_status_request_with_trailing_elements_is_a_status_request() -> None:
    assert decode_one(frame([1, "status", None, "extra"])) == protocol.StatusRequest()
    # From a client, "status" is always a request, whatever follows its type.
    assert decode_one(frame([1, "status", {"boot_time": 1}])) == protocol.StatusRequest()


def test_an_ignored_element_may_be_any_msgpack_value() -> None:
    assert decode_one(frame([1, "ping", {1: 2}])) == protocol.Ping()
    assert decode_one(frame([1, "ping", {(1, 2): [b"bin", 1.5, None]}])) == protocol.Ping()
    record = decode_one(frame([1, "record", [["192.0.2.1", None]], {3: msgpack.ExtType(5, b"x")}]))
    assert isinstance(record, protocol.Record) and list(record.pairs) == [["192.0.2.1", None]]
    reply = frame([1, "status", Status(1, 2, 3, 4).to_dict(), {1: 2}])
    assert isinstance(decode_one(reply, protocol.Peer.DAEMON), protocol.StatusReply)


def test_errors_come_in_the_documented_order() -> None:
    # Well-formedness of the whole body first ...
    garbage_after = b"\x93\x02\xa6launch\xc1"
    with pytest.raises(ProtocolError) as info:
        decode_one(struct.pack(">I", len(garbage_after)) + garbage_after)
    assert info.value.code == protocol.ERR_BAD_MSGPACK
    # ... then the fields front to back: the version before the type before the rest.
    for obj, code in [
        ([2, "launch"], protocol.ERR_UNSUPPORTED_VERSION),
        ([1, "launch", "x"], protocol.ERR_UNKNOWN_TYPE),
        ([1, "record", [["a", 5]], {1: 2}], protocol.ERR_BAD_MESSAGE),
    ]:
        with pytest.raises(ProtocolError) as info:
            decode_one(frame(obj))
        assert info.value.code == code


# --- §6: decoding allocates at most what a valid message of that size would -------------

HOSTILE_FRAMES = {
    # The frame: an ignored trailing element of a million empty maps.
    "ping-of-empty-maps": [1, "ping", [{}] * (M - 20)],
    "ping-of-a-tree-of-arrays": [1, "ping", [[[]] * 65535] * 15],
    "record-of-a-tree-of-arrays": [1, "record", [[[]] * 65535] * 15],
    "record-of-empty-maps": [1, "record", [[{}] * 65535] * 15],
    "record-of-pairs-nested": [1, "record", [[["ab", "cd"]] * 65535] * 2],
    "record-of-integers": [1, "record", [[1000] * 65535] * 5],
    "version-of-a-tree": [[[{}] * 65535] * 15, "ping"],
    "interned-of-a-tree-of-arrays": [1, "interned", 0, [[[]] * 65535] * 15, b"", 0, [], b""],
    "interned-of-pairs-nested": [1, "interned", 0, [["ab", "cd"]] * 65535 * 2, b"", 0, [], b""],
    "status-request-of-maps": [1, "status", [{}] * (M - 20)],
}
LEGITIMATE_WORST = [1, "record", [["ab", "cd"]] * protocol.MAX_PAIRS_PER_MESSAGE]


def peak_decoding(data: bytes) -> int:
    decoder = protocol.MessageDecoder()
    decoder.receive_data(data)
    tracemalloc.start()
    try:
        decoder.next_message()
    except ProtocolError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("name", sorted(HOSTILE_FRAMES))
def test_decoding_a_hostile_frame_stays_within_the_documented_bound(name: str) -> None:
    data = frame(HOSTILE_FRAMES[name])
    assert len(data) > M // 3  # each one is a large frame
    assert peak_decoding(data) < DECODE_MEMORY_BOUND


def test_the_bound_covers_the_largest_valid_record() -> None:
    assert peak_decoding(frame(LEGITIMATE_WORST)) < DECODE_MEMORY_BOUND


# --- §7: the decoder keeps no byte of a frame it has returned ---------------------------

MARKER = "marker-198.51.100.7@secret.example"


@pytest.mark.parametrize("tail", [b"", b"\x00\x00", b"\x00\x00\x00\x30\x93"])
def test_a_returned_frame_leaves_no_trace_in_the_buffer(tail: bytes) -> None:
    decoder = protocol.MessageDecoder()
    data = protocol.encode(protocol.Record([("192.0.2.1", MARKER)]))
    # Behind the marker: nothing, or the start of the next frame (nothing to compact yet).
    decoder.receive_data(protocol.encode(protocol.Ping()) + data + tail)
    assert decoder.next_message() == protocol.Ping()
    message = decoder.next_message()
    assert isinstance(message, protocol.Record)
    assert decoder.next_message() is protocol.NEED_DATA
    assert MARKER.encode() not in bytes(decoder._buffer)
    assert decoder.buffered == len(tail)


def test_a_refused_frame_leaves_no_trace_either() -> None:
    decoder = protocol.MessageDecoder()
    decoder.receive_data(frame([1, "record", [["192.0.2.1", MARKER]], 5, {1: [MARKER]}]))
    decoder.next_message()
    bad = frame([1, "record", [[MARKER, 5]]])
    decoder.receive_data(bad)
    with pytest.raises(ProtocolError):
        decoder.next_message()
    assert MARKER.encode() not in bytes(decoder._buffer)


def _fed_like_the_server(
    feed: Callable[[memoryview], None], data: bytes, buffers: Callable[[], bytearray]
) -> list[bytearray]:
    """Feed data in small reads through one shared buffer, overwritten after each
    read as the listeners do; return every buffer the decoder held on the way."""
    shared = bytearray(7)
    seen = [buffers()]
    for start in range(0, len(data), len(shared)):
        piece = data[start : start + len(shared)]
        shared[: len(piece)] = piece
        feed(memoryview(shared)[: len(piece)])
        shared[:] = bytes(len(shared))
        if buffers() is not seen[-1]:
            seen.append(buffers())
    return seen


def test_the_msgpack_decoder_copies_reads_and_overwrites_a_buffer_it_outgrows() -> None:
    decoder = protocol.MessageDecoder()
    pairs = [("192.0.2.1", f"{n}{MARKER}") for n in range(20)]
    seen = _fed_like_the_server(
        decoder.receive_data, protocol.encode(protocol.Record(pairs)), lambda: decoder._buffer
    )
    assert len(seen) > 2  # it grew, more than once
    message = decoder.next_message()
    assert isinstance(message, protocol.Record)
    assert [tuple(pair) for pair in message.pairs] == pairs
    assert all(MARKER.encode() not in bytes(buffer) for buffer in seen)


def test_the_policy_decoder_copies_reads_and_overwrites_a_buffer_it_outgrows() -> None:
    decoder = PolicyDecoder()
    request = f"request=smtpd_access_policy\nsender=u@{MARKER}\nrecipient=r@{MARKER}\n\n"
    seen = _fed_like_the_server(decoder.receive_data, request.encode() * 3, lambda: decoder._buffer)
    assert len(seen) > 1
    assert [decoder.next_request() for _ in range(3)] == [(None, f"u@{MARKER}", None)] * 3
    assert decoder.next_request() is NEED_DATA
    assert all(MARKER.encode() not in bytes(buffer) for buffer in seen)


# --- §8: every error text is fixed ------------------------------------------------------


def test_the_fixed_texts_are_short() -> None:
    assert protocol.ERROR_TEXTS
    assert all(0 < len(text) <= protocol.MAX_ERROR_TEXT for text in protocol.ERROR_TEXTS)


def test_an_address_in_a_frame_header_is_not_echoed() -> None:
    header = bytes([198, 51, 100, 111])  # 3325256815 as a frame length
    with pytest.raises(ProtocolError) as info:
        decode_one(header)
    assert info.value.code == protocol.ERR_TOO_LARGE
    assert "3325256815" not in info.value.message and "198" not in info.value.message


def test_an_unsupported_version_is_not_echoed() -> None:
    for version in (3325256815, 2**63 + 12345, -98765):
        with pytest.raises(ProtocolError) as info:
            decode_one(frame([version, "ping"]))
        assert info.value.code == protocol.ERR_UNSUPPORTED_VERSION
        assert str(version) not in info.value.message and str(abs(version)) not in str(info.value)


hostile_values = st.recursive(
    st.none()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=30)
    | st.binary(max_size=10)
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=3)
    ),
    max_leaves=12,
)
message_like = st.one_of(
    hostile_values,
    st.tuples(
        st.integers(-(2**63), 2**64 - 1) | hostile_values,
        st.sampled_from(["record", "status", "ping", "pong", "error"]) | st.text(max_size=20),
        hostile_values,
    ).map(list),
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(message_like, st.sampled_from(list(protocol.Peer)), st.binary(max_size=8))
def test_every_error_text_is_one_of_the_fixed_texts(
    obj: object, sent_by: protocol.Peer, noise: bytes
) -> None:
    try:
        body = msgpack.packb(obj)
    except (TypeError, ValueError, OverflowError):
        return
    for data in (struct.pack(">I", len(body)) + body, struct.pack(">I", len(body)) + body[:-1],
                 struct.pack(">I", len(body) + len(noise)) + body + noise, noise):  # fmt: skip
        decoder = protocol.MessageDecoder(sent_by=sent_by)
        decoder.receive_data(data)
        decoder.receive_data(b"")
        try:
            decoder.next_message()
        except ProtocolError as exc:
            assert exc.message in protocol.ERROR_TEXTS, exc.message
            assert exc.message == str(exc)


# --- the encoder: a value too long for any message is refused by its length --------


@pytest.mark.parametrize("c_twin", [False, True], ids=["pure", "c-twin-if-built"])
@pytest.mark.parametrize("where", ["conn_ip", "sender"])
def test_encode_columns_refuses_a_value_too_long_for_any_message_before_encoding_it(
    c_twin: bool, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UTF-8 takes at least a byte a character, so a value longer than the largest
    message cannot fit: the pure-Python encoder refuses it by its length, as the C
    twin does, before msgpack makes its UTF-8 (which stays cached on the str) and a
    frame's worth of copies. The error is the one a message over the limit gets."""
    if not c_twin:
        monkeypatch.setattr(encoding, "_c_encode_columns", None)
    huge = "é" * (4 * M)  # 8 MiB of UTF-8
    size = sys.getsizeof(huge)
    columns = (
        ([huge, "192.0.2.1"], ["a@b", None])
        if where == "conn_ip"
        else (["192.0.2.1", None], [None, huge])
    )
    tracemalloc.start()
    try:
        with pytest.raises(LocalProtocolError, match=f"exceeds the limit of {M}"):
            protocol.encode_columns(*columns)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sys.getsizeof(huge) == size  # else its 8 MiB UTF-8 copy now lives with it
    assert peak < M  # no buffer of the value's size was made
    # encode_columns_split halves down to the value and raises the same, still unencoded.
    with pytest.raises(LocalProtocolError, match=f"exceeds the limit of {M}"):
        protocol.encode_columns_split(*columns, max_pairs=2)
    assert sys.getsizeof(huge) == size


def test_encode_columns_still_encodes_a_message_just_under_the_limit() -> None:
    """The length check is a lower bound: what fits is still encoded, whatever its
    characters (a value of 2-byte characters counts double in bytes, not in len)."""
    value = "x" * (M - 64)
    frame_ = protocol.encode_columns([value], [None])
    assert len(frame_) - 4 <= M
    assert msgpack.unpackb(frame_[4:]) == [1, "columns", [value], [None]]
    with pytest.raises(LocalProtocolError, match=f"exceeds the limit of {M}"):
        protocol.encode_columns(["é" * (M // 2)], ["é"])  # fits by len, not in bytes


def test_encode_interned_refuses_a_new_value_too_long_for_any_message_before_encoding_it() -> None:
    huge = "é" * (4 * M)
    size = sys.getsizeof(huge)
    refs = struct.pack("<I", 0)
    with pytest.raises(LocalProtocolError, match=f"exceeds the limit of {M}"):
        protocol.encode_interned(0, [huge], refs, 0, ["a"], refs)
    assert sys.getsizeof(huge) == size


def test_encode_records_refuses_a_value_too_long_for_any_message_before_encoding_it() -> None:
    """The `record` message (for daemons from before `columns`) checks the same way."""
    huge = "é" * (4 * M)
    size = sys.getsizeof(huge)
    for pairs in ([("192.0.2.1", huge)], [(None, "a@b"), (huge, None)]):
        with pytest.raises(LocalProtocolError, match=f"exceeds the limit of {M}"):
            protocol.encode_records(pairs)
        with pytest.raises(LocalProtocolError, match=f"exceeds the limit of {M}"):
            protocol.encode_records_split(pairs)
    assert sys.getsizeof(huge) == size
    # A pair that is not one is not looked into (no per-pair checks: the daemon
    # refuses the message), and a short one is encoded as before.
    assert protocol.encode_records([("192.0.2.1", "a@b"), 7])  # type: ignore[list-item]
