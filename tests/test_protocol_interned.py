"""The sans-IO codec of the intern request and reply and the interned message."""

from __future__ import annotations

import array
import struct

import msgpack
import pytest

from servertracker import protocol
from servertracker.errors import LocalProtocolError, ProtocolError
from tests.conftest import protocol_md_example_frames

CLIENT = protocol.Peer.CLIENT
DAEMON = protocol.Peer.DAEMON
NIL = protocol.INTERNED_NIL
M = protocol.MAX_PAIRS_PER_MESSAGE
E = protocol.MAX_INTERN_ENTRIES


def refs(*ids: int) -> bytes:
    return struct.pack(f"<{len(ids)}I", *ids)


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def decode(data: bytes, sent_by: protocol.Peer = CLIENT) -> object:
    decoder = protocol.MessageDecoder(sent_by=sent_by)
    decoder.receive_data(data)
    return decoder.next_message()


EXAMPLE = protocol.RecordInterned(
    0, ["192.0.2.1"], refs(0, 0, NIL), 0, ["a@b.example", "<>"], refs(0, 1, 0)
)
REFS_ONLY = protocol.RecordInterned(0, [], refs(0), 0, [], refs(1))


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_round_trip_whole_and_byte_by_byte(chunk: int | None) -> None:
    messages = [protocol.InternRequest(131072), EXAMPLE, REFS_ONLY]
    data = b"".join(protocol.encode(m) for m in messages)
    decoder = protocol.MessageDecoder()
    out: list[object] = []
    step = chunk or len(data)
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        while (message := decoder.next_message()) is not protocol.NEED_DATA:
            out.append(message)
    assert out == messages
    # The references stay bytes: the daemon reads them with one np.frombuffer.
    assert all(type(m.ip_refs) is bytes for m in out[1:])  # type: ignore[union-attr]
    assert EXAMPLE.count == 3
    for reply in (protocol.InternReply(0), protocol.InternReply(E)):
        assert decode(protocol.encode(reply), DAEMON) == reply


def test_the_encoder_takes_array_of_uint32_as_references() -> None:
    from_array = protocol.encode_interned(
        0, ["192.0.2.1"], array.array("I", [0, 0, NIL]),
        0, ["a@b.example", "<>"], array.array("I", [0, 1, 0]),
    )  # fmt: skip
    assert from_array == protocol.encode(EXAMPLE)
    with pytest.raises(LocalProtocolError):
        protocol.encode_interned(0, [], array.array("H", [0]), 0, [], array.array("H", [0]))


def test_the_wire_format_is_the_documented_one() -> None:
    assert protocol.encode(protocol.InternRequest(131072)) == frame([1, "intern", 131072])
    assert protocol.encode(protocol.InternReply(7)) == frame([1, "intern", 7])
    assert protocol.encode(EXAMPLE) == frame(
        [1, "interned", 0, ["192.0.2.1"], refs(0, 0, NIL), 0, ["a@b.example", "<>"],
         refs(0, 1, 0)]
    )  # fmt: skip


def test_the_intern_examples_in_docs_protocol_md_are_exact() -> None:
    assert protocol_md_example_frames("Example: intern and interned") == [
        protocol.encode(protocol.InternRequest(131072))
        + protocol.encode(protocol.InternReply(131072)),
        protocol.encode(EXAMPLE),
        protocol.encode(REFS_ONLY),
    ]


def test_the_largest_message_fits_and_more_refuses_to_encode() -> None:
    big = protocol.encode_interned(E - M, ["x"] * M, refs(*range(M)), 0, [], refs(*[NIL] * M))
    message = decode(big)
    assert isinstance(message, protocol.RecordInterned) and message.count == M
    for args in [
        (0, [], b"", 0, [], b""),  # no pairs
        (0, [], refs(0), 0, [], refs(0, 0)),  # unequal lengths
        (0, [], b"\x00\x00\x00", 0, [], b"\x00\x00\x00"),  # not whole uint32s
        (0, [], refs(*[0] * (M + 1)), 0, [], refs(*[0] * (M + 1))),
        (E, ["x"], refs(0), 0, [], refs(0)),  # beyond the largest table
        (-1, [], refs(0), 0, [], refs(0)),
    ]:
        with pytest.raises(LocalProtocolError):
            protocol.encode_interned(*args)  # type: ignore[arg-type]


GOOD = [0, ["a"], refs(0), 0, ["b"], refs(0)]


@pytest.mark.parametrize(
    ("sent_by", "body"),
    [
        (CLIENT, [1, "intern"]),
        (CLIENT, [1, "intern", 0]),
        (CLIENT, [1, "intern", E + 1]),
        (CLIENT, [1, "intern", -1]),
        (CLIENT, [1, "intern", True]),
        (CLIENT, [1, "intern", 1.0]),
        (CLIENT, [1, "intern", "5"]),
        (DAEMON, [1, "intern"]),
        (DAEMON, [1, "intern", -1]),
        (DAEMON, [1, "intern", E + 1]),
        (DAEMON, [1, "intern", None]),
        (CLIENT, [1, "interned", *GOOD[:5]]),  # a field missing
        (CLIENT, [1, "interned", None, *GOOD[1:]]),
        (CLIENT, [1, "interned", -1, *GOOD[1:]]),
        (CLIENT, [1, "interned", E + 1, *GOOD[1:]]),
        (CLIENT, [1, "interned", E, ["a"], *GOOD[2:]]),  # first + len(new) > 2**20
        (CLIENT, [1, "interned", 0, ["a", None], refs(0, 1), 0, [], refs(0, 0)]),  # nil
        (CLIENT, [1, "interned", 0, [b"a"], *GOOD[2:]]),  # bin, not str
        (CLIENT, [1, "interned", 0, [["a", "b"]], *GOOD[2:]]),
        (CLIENT, [1, "interned", 0, "a", *GOOD[2:]]),
        (CLIENT, [1, "interned", 0, ["a"], [0], *GOOD[3:]]),  # refs not a bin
        (CLIENT, [1, "interned", 0, ["a"], "\x00\x00\x00\x00", *GOOD[3:]]),  # str
        (CLIENT, [1, "interned", 0, ["a"], b"\x00\x00\x00", *GOOD[3:]]),  # bad length
        (CLIENT, [1, "interned", 0, [], b"", 0, [], b""]),  # no pairs
        (CLIENT, [1, "interned", 0, ["a", "b"], refs(0), 0, [], refs(0)]),  # new > refs
        (CLIENT, [1, "interned", *GOOD[:5], refs(0, 0)]),  # unequal lengths
        (CLIENT, [1, "interned", 0, [], refs(*[0] * (M + 1)), 0, [], refs(*[0] * (M + 1))]),
    ],
)  # fmt: skip
def test_malformed_intern_and_interned_are_bad_messages(
    sent_by: protocol.Peer, body: list[object]
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(frame(body), sent_by)
    assert caught.value.code == protocol.ERR_BAD_MESSAGE
    assert caught.value.message in protocol.ERROR_TEXTS


def test_interned_is_a_client_message_and_extra_elements_are_ignored() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(protocol.encode(EXAMPLE), DAEMON)
    assert caught.value.code == protocol.ERR_UNEXPECTED
    message = decode(frame([1, "interned", *GOOD, {1: b"future"}]))
    assert message == protocol.RecordInterned(0, ["a"], refs(0), 0, ["b"], refs(0))
    assert decode(frame([1, "intern", 5, "future"])) == protocol.InternRequest(5)


def test_a_bin_where_a_string_is_expected_is_still_refused() -> None:
    # The client decoder now builds bins (the references): elsewhere they stay wrong.
    for body in ([1, "record", [[b"192.0.2.1", None]]], [1, "columns", [b"x"], [None]]):
        with pytest.raises(ProtocolError) as caught:
            decode(frame(body))
        assert caught.value.code == protocol.ERR_BAD_MESSAGE
