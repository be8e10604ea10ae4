"""The sans-IO protocol: round trips, byte-at-a-time decoding, limits, garbage."""

from __future__ import annotations

import re
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import protocol
from servertracker.errors import LocalProtocolError, ProtocolError
from servertracker.status import Status
from tests.conftest import protocol_md_example_frames

STATUS = Status(
    boot_time=1, unique_conn_ips=2, unique_domains=3, unique_ip_servers=4, updated_time=5.5
)

CLIENT_MESSAGES: list[protocol.Message] = [
    protocol.Record([("192.0.2.1", "user@example.com"), (None, "<>"), ("::1", None)]),
    protocol.RecordColumns(["192.0.2.1", None, "::1"], ["user@example.com", "<>", None]),
    protocol.FeaturesRequest(),
    protocol.StatusRequest(),
    protocol.Ping(),
]
DAEMON_MESSAGES: list[protocol.Message] = [
    protocol.Features(("columns", "something-newer")),
    protocol.Pong(),
    protocol.StatusReply(STATUS),
    protocol.Error("bad-message", "explanation"),
]


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def decode_all(
    data: bytes, chunk: int | None = None, sent_by: protocol.Peer = protocol.Peer.CLIENT
) -> list[object]:
    decoder = protocol.MessageDecoder(sent_by=sent_by)
    out: list[object] = []
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        while (message := decoder.next_message()) is not protocol.NEED_DATA:
            out.append(message)
    decoder.receive_data(b"")
    out.append(decoder.next_message())
    return out


def normalised(message: object) -> object:
    if isinstance(message, protocol.Record):
        return protocol.Record([tuple(p) for p in message.pairs])
    if isinstance(message, protocol.RecordColumns):
        return protocol.RecordColumns(list(message.conn_ips), list(message.senders))
    return message


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
@pytest.mark.parametrize(
    ("sent_by", "messages"),
    [(protocol.Peer.CLIENT, CLIENT_MESSAGES), (protocol.Peer.DAEMON, DAEMON_MESSAGES)],
)
def test_round_trip_whole_and_byte_by_byte(
    chunk: int | None, sent_by: protocol.Peer, messages: list[protocol.Message]
) -> None:
    stream = b"".join(protocol.encode(m) for m in messages)
    decoded = decode_all(stream, chunk, sent_by)
    assert decoded[-1] is protocol.CLOSED
    assert [normalised(m) for m in decoded[:-1]] == [normalised(m) for m in messages]


def test_wire_format_is_the_documented_one() -> None:
    # docs/protocol.md: 4-byte big-endian length, then msgpack [version, type, ...].
    data = protocol.encode(protocol.Record([("192.0.2.1", "a@b.example")]))
    assert data[:4] == struct.pack(">I", len(data) - 4)
    assert msgpack.unpackb(data[4:]) == [1, "record", [["192.0.2.1", "a@b.example"]]]
    assert protocol.encode(protocol.Ping()) == frame([1, "ping"])
    assert protocol.encode(protocol.StatusRequest()) == frame([1, "status"])


def test_trailing_fields_are_ignored_for_compatibility() -> None:
    assert decode_all(frame([1, "ping", "future"]))[0] == protocol.Ping()


def expect_error(data: bytes, code: str, sent_by: protocol.Peer = protocol.Peer.CLIENT) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_all(data, sent_by=sent_by)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"type": "ping"}, protocol.ERR_BAD_MESSAGE),
        ([1], protocol.ERR_BAD_MESSAGE),
        (["1", "ping"], protocol.ERR_BAD_MESSAGE),
        ([2, "ping"], protocol.ERR_UNSUPPORTED_VERSION),
        ([1, 5], protocol.ERR_BAD_MESSAGE),
        ([1, "launch"], protocol.ERR_UNKNOWN_TYPE),
        ([1, "record"], protocol.ERR_BAD_MESSAGE),
        ([1, "record", "x"], protocol.ERR_BAD_MESSAGE),
        ([1, "record", [["a"]]], protocol.ERR_BAD_MESSAGE),
        ([1, "record", [["a", "b", "c"]]], protocol.ERR_BAD_MESSAGE),
        ([1, "record", [["a", 5]]], protocol.ERR_BAD_MESSAGE),
        ([1, "record", [[b"a", "b"]]], protocol.ERR_BAD_MESSAGE),
        ([1, "record", [["a", ["nested"]]]], protocol.ERR_BAD_MESSAGE),
        ([1, "record", ["ab"]], protocol.ERR_BAD_MESSAGE),
        ([1, "pong"], protocol.ERR_UNEXPECTED),
        ([1, "error", "busy", "text"], protocol.ERR_UNEXPECTED),
    ],
)
def test_ill_typed_messages(obj: object, code: str) -> None:
    expect_error(frame(obj), code)


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ([1, "status"], protocol.ERR_BAD_MESSAGE),
        ([1, "status", {"boot_time": "x"}], protocol.ERR_BAD_MESSAGE),
        ([1, "status", [1, 2]], protocol.ERR_BAD_MESSAGE),
        ([1, "error", 1, 2], protocol.ERR_BAD_MESSAGE),
        ([1, "error", "code"], protocol.ERR_BAD_MESSAGE),
        ([1, "ping"], protocol.ERR_UNEXPECTED),
        ([1, "record", []], protocol.ERR_UNEXPECTED),
        ([1, "launch"], protocol.ERR_UNKNOWN_TYPE),
    ],
)
def test_ill_typed_replies(obj: object, code: str) -> None:
    expect_error(frame(obj), code, protocol.Peer.DAEMON)


def test_one_bad_pair_rejects_the_whole_message() -> None:
    expect_error(
        frame([1, "record", [["192.0.2.1", "a@b.c"]] * 10 + [[1, 2]]]), protocol.ERR_BAD_MESSAGE
    )


def test_garbage_bytes() -> None:
    expect_error(struct.pack(">I", 3) + b"\xc1\xc1\xc1", protocol.ERR_BAD_MSGPACK)
    expect_error(struct.pack(">I", 2) + b"\x92\x01", protocol.ERR_BAD_MSGPACK)  # truncated msgpack
    expect_error(struct.pack(">I", 3) + b"\x01\x02\x03", protocol.ERR_BAD_MSGPACK)  # extra data
    # Invalid UTF-8 in a string the decoder reads; a value it never reads is not checked.
    bad_utf8 = b"\x93\x01\xa6record\x91\x92\xc0\xa3\xff\xfe\xfd"
    expect_error(struct.pack(">I", len(bad_utf8)) + bad_utf8, protocol.ERR_BAD_MSGPACK)
    ignored = b"\x93\x01\xa4ping\xa3\xff\xfe\xfd"
    assert decode_all(struct.pack(">I", len(ignored)) + ignored)[0] == protocol.Ping()
    deep = b"\x91" * 100000 + b"\xc0"
    expect_error(struct.pack(">I", len(deep)) + deep, protocol.ERR_BAD_MSGPACK)


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = protocol.MessageDecoder()
    decoder.receive_data(struct.pack(">I", protocol.MAX_MESSAGE_SIZE + 1))
    with pytest.raises(ProtocolError) as info:
        decoder.next_message()
    assert info.value.code == protocol.ERR_TOO_LARGE
    with pytest.raises(ProtocolError):  # the decoder stays broken
        decoder.next_message()


def test_empty_frame() -> None:
    expect_error(b"\x00\x00\x00\x00", protocol.ERR_EMPTY_FRAME)


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 10])
def test_truncated_at_end_of_stream(cut: int) -> None:
    data = protocol.encode(protocol.Record([("192.0.2.1", "user@example.com")]))
    expect_error(data[:cut], protocol.ERR_TRUNCATED)


def test_buffer_is_compacted_and_bounded() -> None:
    decoder = protocol.MessageDecoder()
    one = protocol.encode(protocol.Ping())
    for _ in range(10000):
        decoder.receive_data(one)
        assert decoder.next_message() == protocol.Ping()
    assert decoder.buffered == 0
    assert len(decoder._buffer) <= 2 * len(one)


def test_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        protocol.encode_records([("a", object())])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError):
        protocol.encode_records([("a", "b")] * (protocol.MAX_PAIRS_PER_MESSAGE + 1))
    with pytest.raises(LocalProtocolError):
        protocol.encode_records([("a" * 600_000, "b" * 600_000)])
    decoder = protocol.MessageDecoder()
    decoder.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"x")


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_fuzz_random_bytes_only_raise_protocol_error(data: bytes, chunk: int) -> None:
    decoder = protocol.MessageDecoder(max_message_size=256)
    try:
        for start in range(0, len(data), chunk):
            decoder.receive_data(data[start : start + chunk])
            while decoder.next_message() is not protocol.NEED_DATA:
                pass
    except ProtocolError:
        pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(msgpack_values)
def test_fuzz_well_formed_msgpack_of_any_shape(obj: object) -> None:
    try:
        messages = decode_all(frame(obj))
    except ProtocolError:
        return
    assert messages[-1] is protocol.CLOSED


def test_split_encoding_keeps_every_pair_within_limits() -> None:
    pairs = [(f"192.0.2.{i % 250}", "u@" + "d" * 200 + f"{i}.example") for i in range(20000)]
    frames = protocol.encode_records_split(pairs)
    assert len(frames) > 1
    assert all(len(f) - 4 <= protocol.MAX_MESSAGE_SIZE for f in frames)
    decoded = decode_all(b"".join(frames))
    assert [tuple(p) for m in decoded[:-1] for p in m.pairs] == pairs  # type: ignore[union-attr]


def test_the_example_in_docs_protocol_md_is_exact() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    example = doc.split("## Example\n", 1)[1].split("\n## ", 1)[0]
    hex_columns = [
        re.split(r"\s{3,}", line.strip())[0]
        for line in example.splitlines()
        if line.startswith("    ")
    ]
    hex_bytes = "".join(hex_columns).replace(" ", "")
    data = protocol.encode(protocol.Record([("192.0.2.1", "a@b.example")]))
    assert bytes.fromhex(hex_bytes) == data


def test_the_columns_and_features_examples_in_docs_protocol_md_are_exact() -> None:
    assert protocol_md_example_frames("Example: columns and features") == [
        protocol.encode(protocol.RecordColumns(["192.0.2.1", None], ["a@b.example", "<>"])),
        protocol.encode(protocol.FeaturesRequest())
        + protocol.encode(protocol.Features(("columns", "interned"))),
    ]


def test_columns_and_features_are_the_documented_bytes() -> None:
    data = protocol.encode(protocol.RecordColumns(["192.0.2.1", None], ["a@b.example", "<>"]))
    assert data == frame([1, "columns", ["192.0.2.1", None], ["a@b.example", "<>"]])
    assert data.hex(" ") == (
        "00 00 00 26 94 01 a7 63 6f 6c 75 6d 6e 73 92 a9 31 39 32 2e 30 2e 32 2e 31 c0"
        " 92 ab 61 40 62 2e 65 78 61 6d 70 6c 65 a2 3c 3e"
    )
    assert protocol.encode(protocol.FeaturesRequest()).hex(" ") == (
        "00 00 00 0b 92 01 a8 66 65 61 74 75 72 65 73"
    )
    assert protocol.encode(protocol.Features(protocol.FEATURES)) == frame(
        [1, "features", ["columns", "interned"]]
    )


def test_docs_protocol_md_lists_the_feature_names_protocol_defines() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    table = doc.split("| name | listed | meaning |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    documented = [row.split("`")[1] for row in table.splitlines()]
    # In the order protocol/messages.py defines them (the package re-exports them sorted).
    defined = [
        value for name, value in vars(protocol.messages).items() if name.startswith("FEATURE_")
    ]
    assert documented == defined
    assert set(protocol.FEATURES) <= set(defined)


CLIENT = protocol.Peer.CLIENT
DAEMON = protocol.Peer.DAEMON


@pytest.mark.parametrize(
    ("sent_by", "body"),
    [
        (CLIENT, [1, "columns", ["192.0.2.1"]]),  # one column
        (CLIENT, [1, "columns", ["192.0.2.1"], ["a@b", "c@d"]]),  # unequal lengths
        (CLIENT, [1, "columns", [], []]),  # no pairs
        (CLIENT, [1, "columns", ["192.0.2.1"], [b"a@b"]]),  # bin, not str
        (CLIENT, [1, "columns", [1], ["a@b"]]),
        (CLIENT, [1, "columns", [["a", "b"]], ["a@b"]]),
        (CLIENT, [1, "columns", "192.0.2.1", "a@b"]),
        (CLIENT, [1, "columns", ["x"] * (protocol.MAX_PAIRS_PER_MESSAGE + 1),
                  ["y"] * (protocol.MAX_PAIRS_PER_MESSAGE + 1)]),
        (DAEMON, [1, "features"]),
        (DAEMON, [1, "features", "columns"]),
        (DAEMON, [1, "features", [1]]),
        (DAEMON, [1, "features", ["x" * 65]]),
        (DAEMON, [1, "features", ["x"] * 65]),
    ],
)  # fmt: skip
def test_malformed_columns_and_features_are_bad_messages(
    sent_by: protocol.Peer, body: list[object]
) -> None:
    decoder = protocol.MessageDecoder(sent_by=sent_by)
    decoder.receive_data(frame(body))
    with pytest.raises(ProtocolError) as caught:
        decoder.next_message()
    assert caught.value.code == protocol.ERR_BAD_MESSAGE
    assert caught.value.message in protocol.ERROR_TEXTS


def test_columns_split_keeps_every_pair_in_order() -> None:
    conn_ips = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]
    senders = [f"u@d{i}.example" if i % 7 else "x" * 600 for i in range(1000)]
    frames = protocol.encode_columns_split(conn_ips, senders, max_pairs=300)
    decoded = [m for f in frames for m in decode_all(f)[:-1]]
    assert all(isinstance(m, protocol.RecordColumns) for m in decoded)
    assert [ip for m in decoded for ip in m.conn_ips] == conn_ips  # type: ignore[union-attr]
    assert [s for m in decoded for s in m.senders] == senders  # type: ignore[union-attr]
    with pytest.raises(LocalProtocolError):
        protocol.encode_columns([], [])
