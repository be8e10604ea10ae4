"""Columns messages read in place by the C extension (raw_cache.scan_columns() and
Tracker.record_scanned()): the same verdicts as decode_body(), the same values,
the same counts as the decoded path, and the body overwritten once counted.

Skipped where the extension is not built (test_accel.py fails where a compiler
could have built it)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import TypeVar

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from servertracker import accel, protocol
from servertracker.errors import ProtocolError
from tests.conftest import Daemon
from tests.test_accel import SALT, both_trackers, conn_ips, counted, senders
from trackerd.core import raw_cache
from trackerd.core.raw_cache import scan_columns
from trackerd.core.tracker import Tracker

pytestmark = pytest.mark.skipif(
    raw_cache._ccolumns is None, reason="the C extension is not built, or turned off"
)

Column = list[str | None]


def decoded(body: bytes) -> tuple[Column, Column] | str:
    """What decode_body() makes of a body: a columns message's values, or the error
    code (or the type of any other message)."""
    try:
        message = protocol.decode_body(bytearray(body))
    except ProtocolError as exc:
        return exc.code
    if isinstance(message, protocol.RecordColumns):
        return list(message.conn_ips), list(message.senders)
    return type(message).__name__


def scanned(body: bytes) -> tuple[Column, Column] | None:
    columns = scan_columns(bytearray(body))
    if columns is None:
        return None
    values = columns.values(0, 0, len(columns)), columns.values(1, 0, len(columns))
    columns.release()
    return values


texts = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from(["192.0.2.1", "u@example.com", "<a@b.example>", "\u00e9", "\U0001f600"]),
)


#: Not UTF-8 as Python's strict decoder reads it: a bad byte, an overlong form, an
#: encoded surrogate, past U+10FFFF, sequences cut short.
INVALID_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc3"]


def one_string_body(text: bytes) -> bytes:
    """[1, "columns", [text], [nil]], the text's bytes as they are (a fixstr)."""
    return b"\x94\x01\xa7columns\x91" + bytes([0xA0 | len(text)]) + text + b"\x91\xc0"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Columns messages as the library writes them, and mangled: cut short, bytes
    changed or added, extra elements, other encodings, invalid UTF-8 and
    surrogates, other message types, unequal or empty columns."""
    count = draw(st.integers(0, 20))
    first = draw(st.lists(texts, min_size=count, max_size=count))
    second = draw(st.lists(texts, min_size=count, max_size=count + 1))
    extra = draw(
        st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=3)), max_size=2)
    )
    kind = draw(st.sampled_from(["columns", "columns", "columns", "record", "column"]))
    body = msgpack.packb([1, kind, first, second, *extra])
    mangle = draw(st.integers(0, 6))
    if mangle == 1 and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif mangle == 2 and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    elif mangle == 3:
        body += draw(st.binary(min_size=1, max_size=3))
    elif mangle == 4:  # a string's bytes as invalid UTF-8 or an encoded surrogate
        body = one_string_body(draw(st.sampled_from(INVALID_UTF8)))
    elif mangle == 5:  # a str8 header where a fixstr would do: well-formed, not plain
        body = body.replace(b"\xa7columns", b"\xd9\x07columns")
    return body


@settings(max_examples=300, derandomize=True, deadline=None)
@given(bodies())
def test_a_body_read_in_place_is_one_decode_body_takes_alike(body: bytes) -> None:
    """scan_columns() reads only bodies that decode_body() takes as columns messages,
    with the very same values; anything else is left to decode_body() (its verdict)."""
    values = scanned(body)
    if values is not None:
        assert decoded(body) == values


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=40))
def test_every_columns_message_the_library_writes_is_read_in_place(
    pairs: list[tuple[str | None, str | None]],
) -> None:
    ips, senders_ = [p[0] for p in pairs], [p[1] for p in pairs]
    (frame,) = protocol.encode_columns_split(ips, senders_, 512)
    assert scanned(bytes(frame[protocol.HEADER_SIZE :])) == (ips, senders_)


def test_release_overwrites_the_body_and_ends_the_columns() -> None:
    body = bytearray(msgpack.packb([1, "columns", ["203.0.113.9"], ["a@secret.example"]]))
    columns = scan_columns(body)
    assert columns is not None
    with pytest.raises(BufferError):
        body.extend(b"x")  # held: it cannot move while read in place
    columns.release()
    assert body == bytes(len(body))
    with pytest.raises(ValueError):
        columns.values(0, 0, 1)
    columns.release()  # twice is harmless


@pytest.mark.parametrize("call", ["values", "look_up_columns"])
def test_a_release_from_a_finaliser_amid_a_call_waits_for_its_end(call: str) -> None:
    """The list a call makes may run the collector, and so a __del__ that releases
    the columns: the call still reads what it was given (not freed memory), and the
    release happens when it ends. In a fresh interpreter: a crash there fails this."""
    code = f"""
        import gc, msgpack
        from trackerd.core._ccolumns import scan_columns, Table
        senders = ["a@b%d" % i for i in range(20)]
        body = bytearray(msgpack.packb([1, "columns", ["10.0.0.1"] * 20, senders]))
        columns = scan_columns(body)
        class Releaser:
            def __del__(self):
                columns.release()
        gc.disable()
        keep = [[] for _ in range(200)]  # no list free list: PyList_New goes to the collector
        releaser = Releaser()
        releaser.cycle = releaser  # freed by the collector only, which runs __del__
        del releaser
        gc.set_threshold(1)
        gc.enable()
        if "{call}" == "values":
            got = columns.values(1, 0, 20)
        else:
            got = Table(64, bytes(32), 7, True).look_up_columns(columns, 1, 0, 20)[2]
        gc.disable()
        assert got == senders, got
        assert len(columns) == 0 and body == bytes(len(body))  # released at the end
        print("ok")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONMALLOC": "debug"},  # freed memory overwritten
    )
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.lists(st.tuples(texts, texts), min_size=1, max_size=12), min_size=1, max_size=5))
def test_joined_columns_hold_their_parts_values_in_order(
    messages: list[list[tuple[str | None, str | None]]],
) -> None:
    """join_columns() is the concatenation of its parts' columns (its pure-Python
    twin), whatever the values (None, empty, non-ASCII); the parts stay as they are
    until released, and the joined one's release ends it as a part's does."""
    assume(all(encodable(value) for message in messages for pair in message for value in pair))
    bodies_ = [
        bytearray(msgpack.packb([1, "columns", [p[0] for p in m], [p[1] for p in m]]))
        for m in messages
    ]
    parts = [scan_columns(body) for body in bodies_]
    assert all(part is not None for part in parts)
    joined = raw_cache.join_columns(parts)  # type: ignore[arg-type]
    count = sum(map(len, messages))
    assert len(joined) == count
    for column in (0, 1):
        assert joined.values(column, 0, count) == [p[column] for m in messages for p in m]
    for part, message in zip(parts, messages, strict=True):
        assert part is not None and part.values(1, 0, len(part)) == [p[1] for p in message]
        part.release()
    assert all(body == bytes(len(body)) for body in bodies_)
    assert joined.values(0, count - 1, count) == [messages[-1][-1][0]]  # its own copy
    joined.release()
    assert len(joined) == 0
    with pytest.raises(ValueError):
        joined.values(0, 0, 1)


def test_join_refuses_what_is_not_a_list_of_columns_held() -> None:
    body = bytearray(msgpack.packb([1, "columns", ["192.0.2.1"], ["a@b.example"]]))
    columns = scan_columns(body)
    assert columns is not None
    for wrong in ([], (columns,), [columns, "columns"], [None]):
        with pytest.raises(TypeError):
            raw_cache.join_columns(wrong)  # type: ignore[arg-type]
    released = scan_columns(bytearray(body))
    assert released is not None
    released.release()
    with pytest.raises(ValueError):
        raw_cache.join_columns([columns, released])
    joined = raw_cache.join_columns([columns, columns, raw_cache.join_columns([columns])])
    assert joined.values(1, 0, 3) == ["a@b.example"] * 3


def test_a_release_from_a_finaliser_during_a_join_is_safe() -> None:
    """join_columns() may run the collector (its list), and so a __del__ that
    releases a part: it never reads what was freed, either refusing the part as
    released or joining it whole and leaving its release for the end. In a fresh
    interpreter, freed memory overwritten: a crash there fails this."""
    code = """
        import gc, msgpack
        from trackerd.core._ccolumns import scan_columns, join_columns
        senders = ["a@b%d" % i for i in range(20)]
        body = bytearray(msgpack.packb([1, "columns", ["10.0.0.1"] * 20, senders]))
        columns = scan_columns(body)
        other = scan_columns(bytearray(msgpack.packb([1, "columns", ["x"], ["y"]])))
        class Releaser:
            def __del__(self):
                columns.release()
        gc.disable()
        keep = [[] for _ in range(200)]
        releaser = Releaser()
        releaser.cycle = releaser
        del releaser
        gc.set_threshold(1)
        gc.enable()
        try:
            joined = join_columns([other, columns])
        except ValueError:
            pass
        else:
            assert joined.values(1, 0, 21) == ["y", *senders], joined.values(1, 0, 21)
        gc.disable()
        assert len(columns) == 0 and body == bytes(len(body))  # released
        print("ok")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONMALLOC": "debug"},
    )
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_out_of_range_requests_are_refused() -> None:
    columns = scan_columns(bytearray(msgpack.packb([1, "columns", ["a", "b"], ["c", "d"]])))
    assert columns is not None and len(columns) == 2
    table = raw_cache.CRawCache(64)._table
    for column, start, stop in [(2, 0, 1), (-1, 0, 1), (0, -1, 1), (0, 1, 0), (0, 0, 3)]:
        with pytest.raises(IndexError):
            table.look_up_columns(columns, column, start, stop)
        with pytest.raises(IndexError):
            columns.values(column, start, stop)
    with pytest.raises(TypeError):
        table.look_up_columns("not columns", 0, 0, 1)  # type: ignore[arg-type]


def test_the_largest_message_is_read_in_place() -> None:
    count = protocol.MAX_PAIRS_PER_MESSAGE
    body = msgpack.packb([1, "columns", ["192.0.2.1"] * count, [None] * count])
    assert scan_columns(bytearray(body)) is not None
    body = msgpack.packb([1, "columns", ["a"] * (count + 1), [None] * (count + 1)])
    assert scan_columns(bytearray(body)) is None and decoded(body) == protocol.ERR_BAD_MESSAGE


def encodable(value: str | None) -> bool:
    return value is None or not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def record_scanned(tracker: Tracker, body: bytes, step: int) -> None:
    columns = scan_columns(bytearray(body))
    assert columns is not None
    start = 0
    while start < len(columns):
        start += tracker.record_scanned(columns, start, min(start + step, len(columns)), 0.0)
    columns.release()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    st.lists(st.lists(st.tuples(conn_ips, senders()), min_size=1, max_size=40), max_size=5),
    st.integers(1, 50),
)
def test_read_in_place_counts_as_decoded(
    batches: list[list[tuple[str | None, str | None]]], step: int
) -> None:
    """The same messages counted read in place (in slices under a passed deadline,
    so at least one pair each), and decoded on the pure-Python caches: the same
    records, tallies, distinct counts and digests."""
    # A str with a lone surrogate cannot be sent (it is no UTF-8): the decoded path's.
    assume(all(encodable(value) for batch in batches for pair in batch for value in pair))
    c_tracker, python_tracker = both_trackers()
    assert c_tracker.scans_columns and not python_tracker.scans_columns
    for batch in batches:
        ips, senders_ = [p[0] for p in batch], [p[1] for p in batch]
        body = msgpack.packb([1, "columns", ips, senders_])
        record_scanned(c_tracker, body, step)
        python_tracker.record_columns(ips, senders_)
        assert counted(c_tracker) == counted(python_tracker)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    st.lists(st.lists(st.tuples(conn_ips, senders()), min_size=1, max_size=40), max_size=5),
    st.integers(1, 50),
)
def test_joined_messages_count_as_decoded_one_by_one(
    batches: list[list[tuple[str | None, str | None]]], step: int
) -> None:
    """Messages joined (join_columns()) and counted read in place, in slices under a
    passed deadline, and the same messages decoded and counted one by one on the
    pure-Python caches: the same records, tallies, distinct counts and digests."""
    assume(all(encodable(value) for batch in batches for pair in batch for value in pair))
    c_tracker, python_tracker = both_trackers()
    parts = []
    for batch in batches:
        ips, senders_ = [p[0] for p in batch], [p[1] for p in batch]
        parts.append(scan_columns(bytearray(msgpack.packb([1, "columns", ips, senders_]))))
        python_tracker.record_columns(ips, senders_)
    if parts:
        joined = raw_cache.join_columns(parts)  # type: ignore[arg-type]
        start = 0
        while start < len(joined):
            start += c_tracker.record_scanned(joined, start, min(start + step, len(joined)), 0.0)
        joined.release()
    assert counted(c_tracker) == counted(python_tracker)


def test_a_value_read_in_place_and_one_decoded_share_their_cache_entry() -> None:
    """An ASCII value has one key on both paths: a policy request's pair (decoded)
    after a columns message of the same values is all hits."""
    tracker = Tracker(salt=SALT)
    record_scanned(
        tracker, msgpack.packb([1, "columns", ["192.0.2.1"] * 8, ["u@example.com"] * 8]), 8
    )
    pending = [len(counter.pending) for counter in tracker.counters]
    tracker.record_server("192.0.2.1", "other@example.com")
    assert [len(counter.pending) for counter in tracker.counters] == pending
    assert tracker.records == 9


# --- the daemon: both paths, one outcome ----------------------------------------------------


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


FRAMES = [
    msgpack.packb(
        [
            1,
            "columns",
            [f"192.0.2.{i % 7}" for i in range(600)],
            [f"<u{i}@d{i % 11}.example>" if i % 5 else "bogus@" for i in range(600)],
        ]
    ),
    msgpack.packb([1, "columns", ["2001:db8::1", None, "x"], ["[1.2.3.4]", "<>", None]]),
    msgpack.packb([1, "columns", ["192.0.2.200"], ["a@b.example"], "an extra element"]),
]
#: Hostile ones, each on its own connection: the error code the daemon answers.
BAD_FRAMES = [
    (msgpack.packb([1, "columns", ["a"], ["b", "c"]]), protocol.ERR_BAD_MESSAGE),
    (one_string_body(b"\xed\xb3\xbf"), protocol.ERR_BAD_MSGPACK),  # a surrogate
    (msgpack.packb([1, "columns", [5], ["b"]]), protocol.ERR_BAD_MESSAGE),
    (msgpack.packb([1, "columns", ["a"], ["b"]]) + b"\x00", protocol.ERR_BAD_MSGPACK),
]


def run_in_one_write(daemon: Daemon) -> tuple[tuple[int, ...], bytes]:
    """Columns messages in one write, so that the daemon reads several whole at
    once and joins those read in place: a plain one, one of other encodings (read
    decoded), plain ones again, a status request in between, then one it refuses.
    The status reply and the counts after the error say what was counted, in order."""
    plain = [frame(body) for body in FRAMES[:2]]
    other = frame(FRAMES[0].replace(b"\xa7columns", b"\xd9\x07columns"))  # not plain
    status = protocol.encode(protocol.StatusRequest())
    bad = frame(msgpack.packb([1, "columns", ["a"], ["b", "c"]]))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.socket_path))
        sock.sendall(b"".join([*plain, other, *plain, status, *plain, *plain, bad]))
        replies = b"".join(iter(lambda: sock.recv(65536), b""))
    with daemon.connect() as conn:
        after = conn.status()
    return (after.records, after.rejected_senders, after.unique_domains), replies


def test_frames_read_together_count_alike_on_both_paths(
    make_daemon: Callable[..., Daemon],
) -> None:
    (c_counts, c_replies), (py_counts, py_replies) = on_both_paths(make_daemon, run_in_one_write)
    assert c_counts == py_counts == (4 * 603 + 600, 5 * 120, 11)
    status_size = struct.unpack(">I", c_replies[:4])[0]
    c_status = msgpack.unpackb(c_replies[4 : 4 + status_size])
    py_status = msgpack.unpackb(py_replies[4 : 4 + status_size])
    assert c_status[2]["records"] == py_status[2]["records"] == 2 * 603 + 600  # before it
    assert c_replies[4 + status_size :] == py_replies[4 + status_size :]
    assert msgpack.unpackb(c_replies[8 + status_size :])[2] == protocol.ERR_BAD_MESSAGE


R = TypeVar("R")


def on_both_paths(make_daemon: Callable[..., Daemon], run: Callable[[Daemon], R]) -> list[R]:
    """run(daemon) on a daemon with the C extension, then on one with the
    pure-Python fallback forced: [C's result, pure Python's]."""
    results = []
    for name, pure in (("c", "0"), ("py", "1")):
        daemon = make_daemon(name, env=dict(os.environ, **{accel.PURE_PYTHON_VARIABLE: pure}))
        daemon.start()
        try:
            results.append(run(daemon))
        finally:
            daemon.stop()
    return results


def run_frames(daemon: Daemon) -> tuple[tuple[int, ...], list[bytes]]:
    errors = []
    for body, _ in BAD_FRAMES:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(daemon.socket_path))
            sock.sendall(frame(body))
            errors.append(b"".join(iter(lambda: sock.recv(65536), b"")))
    with daemon.connect() as conn:
        for body in FRAMES:
            conn._send(frame(body))
        status = conn.status()
    return (
        status.records,
        status.rejected_conn_ips,
        status.rejected_senders,
        status.unique_conn_ips,
        status.unique_domains,
        status.unique_ip_servers,
    ), errors


def test_the_daemon_counts_and_refuses_alike_on_both_paths(
    make_daemon: Callable[..., Daemon],
) -> None:
    (c_counts, c_errors), (py_counts, py_errors) = on_both_paths(make_daemon, run_frames)
    assert c_counts == py_counts == (604, 1, 120, 9, 12, 1)
    assert c_errors == py_errors
    for (_, code), reply in zip(BAD_FRAMES, c_errors, strict=True):
        assert msgpack.unpackb(reply[4:])[2] == code


def test_the_decoder_tells_a_whole_columns_frame_before_it_is_taken() -> None:
    """next_body_starts_with() (what the daemon looks at before it joins a frame):
    only for a frame arrived whole, and it takes nothing."""
    decoder = protocol.MessageDecoder()
    whole = frame(msgpack.packb([1, "columns", ["192.0.2.1"], ["a@b.example"]]))
    decoder.receive_data(whole[:-1])
    assert not decoder.next_body_starts_with(raw_cache.COLUMNS_HEAD)
    decoder.receive_data(whole[-1:] + protocol.encode(protocol.Ping()))
    assert decoder.next_body_starts_with(raw_cache.COLUMNS_HEAD)
    assert decoder.next_body_starts_with(raw_cache.COLUMNS_HEAD)  # nothing taken
    assert isinstance(decoder.next_message(), protocol.RecordColumns)
    assert not decoder.next_body_starts_with(raw_cache.COLUMNS_HEAD)  # a ping next
    assert isinstance(decoder.next_message(), protocol.Ping)
    assert not decoder.next_body_starts_with(b"")  # nothing there
