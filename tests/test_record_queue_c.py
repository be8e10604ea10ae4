"""The C record queue and columns encoder against their pure-Python references.

client/servertracker/_record_queue.c twins record_queue.PyRecordQueue (record_server()'s
hot path: cleaning, cutting, the drop rules, waking the flusher) and
protocol.encode_columns() (a batch's columns frame). Both paths are given the
same inputs, hostile ones included (huge values, empty, types that are neither
str nor bytes, lone surrogates, NUL, runs of whitespace, more "@" than other
characters, every sender form), and must give the same results: the same values
queued, counted and dropped, the same bytes on the wire. Skipped where the
extension is not built (or SERVERTRACKER_PURE_PYTHON is set): CI runs both.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import accel, protocol, sender_split
from servertracker.errors import LocalProtocolError
from servertracker.protocol import encoding
from servertracker.record_queue import LONG_VALUE, PyRecordQueue, RecordQueue
from servertracker.recorder import Client
from servertracker.value_cut import clean, cut
from tests.test_accel import compiler_and_headers

EXTENSION = "servertracker._record_queue"
c_module = accel.load(EXTENSION)
needs_c = pytest.mark.skipif(c_module is None, reason="the C extension is not built")


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """As tests/test_accel.py's for trackerd's: CI has gcc and the headers, so a
    build without this module would skip every test here unnoticed."""
    if not compiler_and_headers():
        pytest.skip("no C compiler or Python headers here: the pure-Python path runs")
    importlib.import_module(EXTENSION)  # whatever SERVERTRACKER_PURE_PYTHON says


SENDER_FORMS = [
    "mail7.example.com",
    "user3@mail7.example.com",
    "<user3@mail7.example.com>",
    "[192.0.2.7]",
    "postmaster@[192.0.2.7]",
    "<postmaster@[192.0.2.7]>",
    "<>",
    "User@MAIL9.Example.COM.",
    "<@relay.example,@b.example:user@d.example>",
    '"odd local"@d.example',
    " <u@d.example> ",
]


class Odd:
    """A value that is neither str nor bytes, whose str() may fail."""

    def __init__(self, text: str, fails: bool) -> None:
        self.text, self.fails = text, fails

    def __str__(self) -> str:
        if self.fails:
            raise RuntimeError("no text")
        return self.text


class Sub(str):
    """A str subclass: queued as the str it holds (value_cut.clean)."""


class OddList(list[Any]):
    """A list whose length and iteration are not its items."""

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Any:
        return iter(["x"])


class OddStr(str):
    """A str that says and encodes itself otherwise."""

    def __str__(self) -> str:
        return "OTHER"

    def __len__(self) -> int:
        return 99

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"OTHER"


texts = st.one_of(
    st.sampled_from(SENDER_FORMS),
    st.text(max_size=40),
    st.text(alphabet=" \t\n\x00@<>.\u3000\u2003\ud800\udfffaé", max_size=80),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["@", " ", "a@", "\x00", "é", "\ud83d"]),
        st.integers(0, 3000),
    ),
    st.builds(
        lambda lead, body, tail: " " * lead + body + " " * tail,
        st.integers(0, 700),
        st.sampled_from(["a@b.com", "x" * 600, "<u@d.example>", ""]),
        st.integers(0, 700),
    ),
)
values = st.one_of(
    st.none(),
    texts,
    texts.map(Sub),
    texts.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=100),
    st.integers(),
    st.floats(allow_nan=False),
    st.builds(Odd, texts, st.booleans()),
)


def queues(max_buffered: int, max_long_chars: int, batch_size: int) -> list[tuple[Any, list[str]]]:
    """A C queue and a pure one, alike, each with a log of its callbacks."""
    made = []
    for kind in (c_module.RecordQueue, PyRecordQueue):  # type: ignore[union-attr]
        calls: list[str] = []
        queue = kind(
            max_buffered,
            max_long_chars,
            batch_size,
            lambda calls=calls: calls.append("wake"),
            lambda calls=calls: calls.append("start"),
            clean,
            cut,
        )
        made.append((queue, calls))
    return made


def state(queue: RecordQueue) -> tuple[object, ...]:
    return (
        queue.snapshot(),
        len(queue),
        queue.recorded,
        queue.dropped,
        queue.dropped_full,
        queue.dropped_long,
        queue.long_queued,
        queue.long_sent,
        queue.sleeping,
        queue.idle,
        queue.started,
    )


operations = st.lists(
    st.one_of(
        st.tuples(st.just("record"), values, values),
        st.tuples(st.just("take"), st.integers(-1, 8)),
        st.tuples(st.just("extend"), st.lists(st.one_of(st.none(), texts), max_size=5)),
        st.tuples(st.just("flags"), st.booleans(), st.booleans(), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(0, 4000),
    st.integers(1, 6),
    operations,
)
@needs_c
def test_the_c_queue_queues_counts_and_drops_as_the_pure_one(
    max_buffered: int, max_long_chars: int, batch_size: int, ops: list[tuple[Any, ...]]
) -> None:
    (c_queue, c_calls), (py_queue, py_calls) = queues(max_buffered, max_long_chars, batch_size)
    for op in ops:
        results = []
        for queue in (c_queue, py_queue):
            if op[0] == "record":
                results.append(queue.record(op[1], op[2]))
            elif op[0] == "take":
                results.append(queue.take(op[1]))
            elif op[0] == "extend":
                # record_many's values: cleaned and cut already.
                ready = [None if v is None else clean(v) for v in op[1]]
                results.append(queue.extend(ready, list(reversed(ready))))
            else:
                queue.sleeping, queue.idle, queue.started = op[1:]
                results.append(None)
        assert results[0] == results[1]
        assert state(c_queue) == state(py_queue)
        assert c_calls == py_calls
    # What the queue holds is only ever str or None, each cut to what the daemon takes.
    for column in c_queue.snapshot():
        limit = protocol.MAX_VALUE_LENGTH + 1
        assert all(v is None or (type(v) is str and len(v) <= limit) for v in column)


@needs_c
def test_the_c_queue_takes_keyword_arguments_as_record_server_does() -> None:
    (c_queue, _), (py_queue, _) = queues(10, 1000, 5)
    for queue in (c_queue, py_queue):
        queue.record(conn_ip="192.0.2.1", sender="a@b.example")
        queue.record("192.0.2.2", sender=None)
        with pytest.raises(TypeError):
            queue.record("192.0.2.3")
        with pytest.raises(TypeError):
            queue.record("192.0.2.3", "x", "y")
        with pytest.raises(TypeError):
            queue.record("192.0.2.3", conn_ip="x")
    assert c_queue.snapshot() == py_queue.snapshot()


@needs_c
def test_the_c_queue_swallows_errors_of_its_callbacks_but_not_an_interrupt() -> None:
    def fails() -> None:
        raise RuntimeError("flusher cannot start")

    def interrupts() -> None:
        raise KeyboardInterrupt

    assert c_module is not None
    queue = c_module.RecordQueue(10, 1000, 5, fails, fails, clean, cut)
    queue.record("192.0.2.1", "a@b.example")  # no exception: recording never breaks a session
    assert queue.recorded == 1
    queue = c_module.RecordQueue(10, 1000, 5, interrupts, interrupts, clean, cut)
    with pytest.raises(KeyboardInterrupt):  # as the pure version's ``except Exception``
        queue.record("192.0.2.1", "a@b.example")


@needs_c
def test_the_c_queue_grows_wraps_and_gives_values_back_in_order() -> None:
    # Rings made for 1,500 records; extend() (record_many()'s, which bounds it
    # itself) queues past that, so they grow, while wrapped too.
    (c_queue, _), (py_queue, _) = queues(1500, 0, 512)
    assert c_queue.capacity == 1500
    for round_ in range(5):
        for queue in (c_queue, py_queue):
            conn_ips: list[str | None] = [f"10.0.{round_}.{i % 256}" for i in range(3000)]
            queue.extend(conn_ips, [f"u{i}@d{round_}.example" for i in range(3000)])
        taken = 2500 - 400 * round_  # the C ring wraps, and grows while wrapped
        assert c_queue.take(taken) == py_queue.take(taken)
        assert state(c_queue) == state(py_queue)
    assert c_queue.take(10**9) == py_queue.take(10**9)
    assert len(c_queue) == 0


@needs_c
def test_the_c_queue_holds_max_buffered_records_without_growing() -> None:
    # Growing the rings copied them inside one record_server() call, 0.4-4 ms
    # (docs/performance.md): they are made for max_buffered records at once.
    (c_queue, _), (py_queue, _) = queues(50_000, 0, 512)
    assert c_queue.capacity == 50_000
    for queue in (c_queue, py_queue):
        for i in range(50_001):  # the last one dropped: the queue is full
            queue.record(f"10.1.{i // 256 % 256}.{i % 256}", f"u{i}@d.example")
    assert c_queue.capacity == 50_000
    assert state(c_queue) == state(py_queue)
    assert c_queue.dropped_full == 1
    assert c_queue.take(10**9) == py_queue.take(10**9)
    # A queue asked to hold more than can sensibly be made at once starts at
    # PREALLOCATED (64 MiB of address space, mapped on first touch) and grows past it.
    (huge, _), _ = queues(10**9, 0, 512)
    assert huge.capacity == 1 << 22


@needs_c
def test_a_c_queue_that_never_empties_reuses_the_rings_start() -> None:
    # The rings are made for max_buffered records and mapped on first touch: a
    # queue that always keeps a few records must not walk round them (it mapped
    # 64 MiB a worker at max_buffered=4,194,304; hostile review, finding 3).
    (c_queue, _), (py_queue, _) = queues(1 << 20, 0, 512)
    for queue in (c_queue, py_queue):
        queue.extend(["192.0.2.1"] * 10, ["a@b.example"] * 10)
    for round_ in range(50):
        for queue in (c_queue, py_queue):
            queue.extend([f"10.0.{round_}.{i % 256}" for i in range(512)], ["u@d.example"] * 512)
        assert c_queue.take(512) == py_queue.take(512)
        assert c_queue.head == 0  # the 10 left moved to the start
        assert state(c_queue) == state(py_queue)


@needs_c
@pytest.mark.parametrize(("left", "moved"), [(0, True), (300, True), (512, True), (513, False)])
def test_a_wrapped_c_queue_moves_what_a_take_leaves_to_the_start(left: int, moved: bool) -> None:
    # Rings of 1,024 records; the records left after a take sit across the rings'
    # end (wrapped) and move to the start, in order, when at most a batch (512).
    (c_queue, _), (py_queue, _) = queues(1024, 0, 512)
    for queue in (c_queue, py_queue):
        queue.extend([f"10.1.{i // 256}.{i % 256}" for i in range(1000)], ["u@d.example"] * 1000)
    assert c_queue.take(300) == py_queue.take(300)  # 700 left, more than a batch: stay
    assert c_queue.head == 300
    for queue in (c_queue, py_queue):
        queue.extend([f"10.2.{i // 256}.{i % 256}" for i in range(300)], ["v@d.example"] * 300)
    taken = 1000 - left  # 1,000 queued, from slot 300 round to slot 275
    assert c_queue.take(taken) == py_queue.take(taken)
    assert (c_queue.head == 0) == moved
    assert state(c_queue) == state(py_queue)
    for queue in (c_queue, py_queue):  # and it goes on from there
        queue.extend(["10.3.0.1"] * 200, ["w@d.example"] * 200)
    assert state(c_queue) == state(py_queue)
    assert c_queue.take(10**9) == py_queue.take(10**9)


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(values, values), max_size=60), st.lists(st.integers(-1, 70), max_size=4))
def test_the_c_queue_takes_a_batch_with_the_pure_columns_frame(
    pairs: list[tuple[Any, Any]], takes: list[int]
) -> None:
    """take_columns(): the C queue makes the frame without the GIL, from the str's
    own characters (not the UTF-8 the pure code has msgpack make): the same
    values taken, the same bytes (or None where the Python code decides: a lone
    surrogate, a frame over the limit)."""
    (c_queue, _), (py_queue, _) = queues(100_000, 1 << 30, 512)
    for conn_ip, sender in pairs:
        c_queue.record(conn_ip, sender)
        py_queue.record(conn_ip, sender)
    for count in [*takes, 10**9]:
        c_taken = c_queue.take_columns(count)
        assert c_taken == py_queue.take_columns(count)
        if c_taken[1]:
            assert c_taken[2] == _encoded(c_taken[0], c_taken[1], c=False) or (
                c_taken[2] is None and _encoded(c_taken[0], c_taken[1], c=False).startswith("Local")
            )
        assert state(c_queue) == state(py_queue)


@needs_c
def test_the_c_queue_encodes_every_utf8_length_as_the_pure_one() -> None:
    """One to four bytes a character, at each boundary, in each str kind."""
    chars = ["a", "\x7f", "\x80", "é", "\xff", "\u0100", "\u07ff", "\u0800", "\ud7ff",
             "\ue000", "\uffff", "\U00010000", "\U0010ffff"]  # fmt: skip
    (c_queue, _), (py_queue, _) = queues(100_000, 1 << 30, 512)
    for first in chars:
        for second in chars:
            for value in (first + second, first * 40 + second, second * 300):
                c_queue.record(value, first)
                py_queue.record(value, first)
    c_taken = c_queue.take_columns(10**9)
    assert c_taken[2] is not None
    assert c_taken == py_queue.take_columns(10**9)


column = st.lists(st.one_of(st.none(), texts, texts.map(Sub), st.integers()), max_size=70)


@needs_c
@settings(max_examples=300, deadline=None)
@given(column, column)
def test_the_c_columns_frame_is_the_pure_one_byte_for_byte(
    conn_ips: list[Any], senders: list[Any]
) -> None:
    count = min(len(conn_ips), len(senders))
    for ips, sends in ((conn_ips[:count], senders[:count]), (conn_ips, senders)):
        assert _encoded(ips, sends, c=True) == _encoded(ips, sends, c=False)


@pytest.mark.parametrize(
    ("conn_ips", "senders"),
    [
        (["1.2.3.4"] * 65_536, [None] * 65_536),  # the most pairs: a 32-bit array header
        (["1.2.3.4"] * 65_537, [None] * 65_537),  # one too many
        (["a" * 65_535, "b" * 65_536, "c" * 255, "d" * 256, "e" * 31, "f" * 32], ["é" * 40] * 6),
        (["x" * 600_000], ["y" * 600_000]),  # over 1 MiB together
        (["x" * (1024 * 1024 - 40)], [None]),  # just within: body 1 MiB exactly or below
        (["é" * 300_000], ["a"]),  # 600,000 bytes of UTF-8
        ([], []),
        (["a"], ["b", "c"]),
        (("1.2.3.4",), ("a@b",)),  # tuples: the pure code decides
        (["\ud800"], ["a"]),  # a lone surrogate: no UTF-8
        ([b"1.2.3.4"], ["a"]),  # bytes: msgpack would send bin, the daemon refuses
        ([True], [1.5]),
        # list subclasses: msgpack goes through __len__ and __iter__, so the C code
        # must not read their items past them
        (OddList(["1.2.3.4", "5.6.7.8"]), ["a", "b"]),
        (OddList(["1.2.3.4"]), ["a"]),
        ([OddStr("1.2.3.4")], [OddStr("a@b")]),
    ],
)
@needs_c
def test_the_c_columns_frame_at_the_limits(conn_ips: Any, senders: Any) -> None:
    assert _encoded(conn_ips, senders, c=True) == _encoded(conn_ips, senders, c=False)


def _encoded(conn_ips: Any, senders: Any, *, c: bool) -> bytes | str:
    """encode_columns()'s frame, with or without the C twin, or the error it raised."""
    saved = encoding._c_encode_columns
    if not c:
        encoding._c_encode_columns = None
    try:
        return protocol.encode_columns(conn_ips, senders)
    except LocalProtocolError as exc:
        return f"LocalProtocolError: {exc}"
    finally:
        encoding._c_encode_columns = saved


@needs_c
def test_a_c_columns_value_too_long_for_any_message_is_not_encoded() -> None:
    """Refused by its length before any UTF-8 is made: no copy of it kept on the str
    (and no time spent making one, holding the GIL); the Python code raises."""
    assert c_module is not None
    huge = "é" * (2 * 1024 * 1024)
    size = sys.getsizeof(huge)
    assert c_module.encode_columns([huge], [None]) is None
    assert c_module.encode_columns(["a"], [huge]) is None
    assert sys.getsizeof(huge) == size  # else a 4 MiB UTF-8 copy now lives with it
    assert _encoded([huge], [None], c=True) == _encoded([huge], [None], c=False)


def _run_alone(code: str) -> subprocess.CompletedProcess[str]:
    """code in a fresh interpreter: a memory error there kills that one, not the tests."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONMALLOC": "debug"},
    )


@needs_c
def test_a_c_queue_never_initialised_raises_instead_of_crashing() -> None:
    """RecordQueue.__new__ alone leaves its callbacks NULL (as the collector's
    tp_clear does): record() says so rather than call through them."""
    result = _run_alone(
        """
        from servertracker._record_queue import RecordQueue
        queue = RecordQueue.__new__(RecordQueue)
        for pair in (("10.0.0.1", "a@b"), (1, 2), ("x" * 100, None)):
            try:
                queue.record(*pair)
            except RuntimeError as exc:
                print("RuntimeError:", exc)
        print(len(queue), queue.take(5))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "RuntimeError: RecordQueue.__init__ was not called",
    ] * 3 + ["0 ([], [])"]


@needs_c
@pytest.mark.parametrize(
    ("finaliser", "call", "expected"),
    [
        # snapshot(): 53 records by the time its lists are filled
        ("for i in range(50): queue.record('192.0.2.1', 'late@x')", "queue.snapshot()",
         "53 53 53"),
        # take(): the __del__ took the three, so none is handed over twice
        ("taken.append(queue.take(10))", "queue.take(10)", "0 0 0 3"),
        # sent_senders(): its list emptied under it: the Python code decides
        ("values.clear()", "sent_senders(values)", "None"),
    ],
)  # fmt: skip
def test_a_finaliser_run_amid_a_c_call_changes_nothing_under_it(
    finaliser: str, call: str, expected: str
) -> None:
    """The lists a call makes may run the collector, and so a __del__ that records,
    takes or changes the call's argument: the call counts after making them."""
    result = _run_alone(
        f"""
        import gc
        from servertracker._record_queue import RecordQueue, sent_senders
        from servertracker.value_cut import clean, cut
        queue = RecordQueue(100, 1000, 10, lambda: None, lambda: None, clean, cut)
        for i in range(3):
            queue.record("10.0.0.%d" % i, "a@b")
        values = ["a@b.example"] * 40
        taken = []
        class Finaliser:
            def __del__(self):
                {finaliser}
        gc.disable()
        keep = [[] for _ in range(200)]  # no list free list: PyList_New goes to the collector
        finaliser = Finaliser()
        finaliser.cycle = finaliser  # freed by the collector only, which runs __del__
        del finaliser
        gc.set_threshold(1)
        gc.enable()
        got = {call}
        gc.disable()
        if got is None:
            print(None)
        else:
            print(len(got[0]), len(got[1]), len(queue), *(len(t[0]) for t in taken))
        """
    )
    assert (result.returncode, result.stdout) == (0, expected + "\n"), result.stderr


@needs_c
def test_another_thread_cannot_reach_a_batch_while_its_frame_is_made() -> None:
    """take_columns() makes the frame without the GIL: the lists it reads are out
    of the collector's sight meanwhile, so a thread walking gc.get_objects() (and
    emptying what it finds: the values would be freed under the encoder) finds
    none of them; every frame holds every record taken."""
    result = _run_alone(
        """
        import gc, sys, threading, time
        import msgpack
        # The hunter gets the GIL only when this thread lets go of it: within
        # take_columns() (and the final join), never between two calls.
        sys.setswitchinterval(1000)
        from servertracker._record_queue import RecordQueue
        from servertracker.value_cut import clean, cut
        MARK = "mark-" + "x" * 20
        queue = RecordQueue(10**6, 10**6, 10, lambda: None, lambda: None, clean, cut)
        found = 0
        done = threading.Event()
        def hunt():
            global found
            while not done.is_set():
                for o in gc.get_objects():
                    if type(o) is list and o and o[0] == MARK:
                        found += 1
                        o.clear()
                time.sleep(0.0001)  # lets the GIL go: take_columns() goes on
        hunter = threading.Thread(target=hunt)
        hunter.start()
        bad = 0
        for round_ in range(100):
            queue.record(MARK, MARK)
            for i in range(4000):
                queue.record("10.0.%d.%d" % (i // 256, i % 256), "é%d@b%d.example" % (round_, i))
            ips, senders, frame = queue.take_columns(10**6)
            body = msgpack.unpackb(frame[4:])
            bad += body[2] != ips or body[3] != senders or len(ips) != 4001
            del ips, senders, body  # else the hunter finds them in the next call
        done.set()
        hunter.join()
        print(found, bad)
        """
    )
    assert (result.returncode, result.stdout) == (0, "0 0\n"), result.stderr


@needs_c
def test_a_forked_child_starts_with_an_empty_c_queue(short_tmp: Path) -> None:
    """Fork safety in C as in Python: the child's queue is its own and empty, and the
    parent's records stay the parent's."""
    client = Client(short_tmp / "nobody.sock", table_entries=0, flush_interval=60)
    assert type(client._queue).__module__ == "servertracker._record_queue"
    client.record_server("192.0.2.1", "parent@d.example")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            fresh = len(client._queue) == 0 and client._thread is None
            client.record_server("192.0.2.2", "child@d.example")
            mine = client._queue.snapshot() == (["192.0.2.2"], ["child@d.example"])
            alive = client._thread is not None and client._thread.is_alive()
            os.write(write, repr((fresh, mine, alive)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "(True, True, True)"
    assert client._queue.snapshot() == (["192.0.2.1"], ["parent@d.example"])
    assert threading.active_count() >= 1
    client.close(0)


@needs_c
def test_long_value_rule_is_the_same_number_in_c() -> None:
    assert c_module is not None
    assert c_module.LONG_VALUE == LONG_VALUE


sender_texts = st.one_of(
    texts,
    st.builds(
        lambda local, domain, form: form.format(local, domain),
        st.text(max_size=12),
        st.text(max_size=12),
        st.sampled_from(["{}@{}", "<{}@{}>", "<{}@{}", "{}@{}>", "{}@@{}", "<@{}:{}>", "{}"]),
    ),
)


@needs_c
@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.none(), sender_texts), max_size=40))
def test_the_c_split_sends_for_each_sender_what_sent_sender_does(
    senders: list[str | None],
) -> None:
    assert c_module is not None
    assert c_module.sent_senders(senders) == [
        sender_split.sent_sender(v) if v else v for v in senders
    ]
    assert sender_split.sent_senders(senders) == c_module.sent_senders(senders)


@needs_c
def test_the_c_split_leaves_other_types_to_the_python_code() -> None:
    assert c_module is not None
    assert c_module.sent_senders(["a@b", 7]) is None  # type: ignore[list-item]
    assert c_module.sent_senders(("a@b",)) is None  # type: ignore[arg-type]
    assert c_module.sent_senders([Sub("a@b")]) is None
    assert c_module.sent_senders(["a@" + "b" * 510, "a@" + "b" * 511]) == [
        "b" * 510,
        "a@" + "b" * 511,
    ]


def test_a_subclass_that_records_its_own_way_is_not_bypassed(short_tmp: Path) -> None:
    """Client.record_server is the queue's record() on each client, unless a subclass
    defines its own: that one runs."""
    seen: list[tuple[str | None, str | None]] = []

    class Noting(Client):
        def record_server(self, conn_ip: str | None, sender: str | None) -> None:
            seen.append((conn_ip, sender))
            super().record_server(conn_ip, sender)

    client = Noting(short_tmp / "nobody.sock", table_entries=0, flush_interval=60)
    client.record_server("192.0.2.1", "a@b.example")
    assert seen == [("192.0.2.1", "a@b.example")]
    assert client.stats().recorded == 1
    plain = Client(short_tmp / "nobody.sock", table_entries=0, flush_interval=60)
    assert plain.record_server == plain._queue.record
    client.close(0)
    plain.close(0)


def _count_in_memory(pid: int, pattern: bytes) -> int:
    """How often pattern occurs in the process's writable anonymous memory, read a
    bounded chunk at a time (a region in one read may be more than this process
    can allocate: under AddressSanitizer, a MemoryError or an abort)."""
    from tests.test_memory_residue import memory_chunks

    # A pattern across two chunks is found in the second: it begins with the last
    # len - 1 bytes of the first, too few to hold a whole one (counted twice).
    return sum(chunk.count(pattern) for chunk in memory_chunks(pid, len(pattern) - 1))


@needs_c
def test_the_c_frame_buffers_are_wiped_before_they_are_freed() -> None:
    """take_columns() and encode_columns() make a frame in a C buffer, copy it into
    the bytes object they return, and free the buffer: wiped first, so that the
    only frame holding a sender is the bytes object the caller has (and lets go of).
    Each marker's msgpack form is searched in the live process: once, not twice."""
    if not os.access("/proc/self/mem", os.R_OK):
        pytest.skip("cannot read a process's memory here")
    code = textwrap.dedent(
        """
        import secrets, sys
        from servertracker._record_queue import RecordQueue, encode_columns
        from servertracker.value_cut import clean, cut
        # 20 characters: msgpack's fixstr header 0xb4 then the text. Other senders
        # make a frame of a few kB: freed, it stays in the heap (not unmapped).
        others = ["u%d@other%d.example" % (i, i) for i in range(200)]
        queue = RecordQueue(10**6, 10**6, 10, lambda: None, lambda: None, clean, cut)
        marker = ("t" + secrets.token_hex(10))[:20]
        queue.extend(["192.0.2.1"] * 201, [marker] + others)
        ips, senders, frame_taken = queue.take_columns(10**6)
        assert frame_taken is not None
        print(marker, flush=True)
        sys.stdin.readline()  # searched meanwhile, the frame alive
        marker = ("e" + secrets.token_hex(10))[:20]
        frame_encoded = encode_columns(["192.0.2.1"] * 201, [marker] + others)
        assert frame_encoded is not None
        print(marker, flush=True)
        sys.stdin.readline()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}  # debug fills freed memory
    counts = []
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            for _ in ("take_columns", "encode_columns"):
                marker = child.stdout.readline().strip()
                assert marker, "the child failed"
                counts.append(_count_in_memory(child.pid, b"\xb4" + marker.encode()))
                child.stdin.write("go on\n")
                child.stdin.flush()
        finally:
            child.stdin.close()
        assert child.wait(30) == 0
    assert counts == [1, 1]  # the returned bytes object's copy, and nothing else
