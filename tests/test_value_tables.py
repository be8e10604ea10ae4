"""A worker's value tables: every message they make is one the daemon takes, and
resolves to exactly the values recorded, whatever the table size and the batches.

A model of the daemon's side of the `interned` message (docs/protocol.md) checks
each message as the daemon does: ids within the grant, definitions applied before
references, every reference defined, every definition referenced by its message.
"""

from __future__ import annotations

import array
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import batch_encoder, protocol, value_tables
from servertracker.sender_split import sent_senders
from servertracker.value_tables import NIL, Message, ValueTables


class ModelDaemon:
    """One connection's two tables as the daemon keeps them (values, not digests)."""

    def __init__(self, granted: int) -> None:
        self.granted = granted
        self.tables: tuple[dict[int, str], dict[int, str]] = ({}, {})

    def resolve(self, message: Message) -> list[tuple[str | None, str | None]]:
        start, end, *parts = message
        assert 1 <= end - start <= protocol.MAX_PAIRS_PER_MESSAGE
        # Through the codec, as the daemon receives it.
        frame = protocol.encode_interned(*parts)  # type: ignore[arg-type]
        decoder = protocol.MessageDecoder()
        decoder.receive_data(frame)
        decoded = decoder.next_message()
        assert isinstance(decoded, protocol.RecordInterned)
        columns = []
        for table, first, new, refs in (
            (self.tables[0], decoded.ip_first, decoded.ip_new, decoded.ip_refs),
            (self.tables[1], decoded.sender_first, decoded.sender_new, decoded.sender_refs),
        ):
            ids = array.array("I", refs).tolist()
            assert len(ids) == end - start
            defined = range(first, first + len(new))
            assert first + len(new) <= self.granted
            assert set(defined) <= set(ids), "a definition not referenced by its message"
            table.update(zip(defined, new, strict=True))
            assert all(ref == NIL or ref in table for ref in ids), "an undefined reference"
            columns.append([None if ref == NIL else table[ref] for ref in ids])
        return list(zip(columns[0], columns[1], strict=True))


VALUES = st.one_of(st.none(), st.sampled_from([f"v{i}" for i in range(12)]), st.text(max_size=3))


@settings(max_examples=120, derandomize=True, deadline=None)
@given(
    st.integers(min_value=1, max_value=9),
    st.lists(st.lists(st.tuples(VALUES, VALUES), min_size=1, max_size=30), max_size=6),
)
def test_messages_resolve_to_the_values_recorded(
    size: int, batches: list[list[tuple[str | None, str | None]]]
) -> None:
    tables = ValueTables(size)
    daemon = ModelDaemon(size)
    for batch in batches:
        conn_ips, senders = [list(column) for column in zip(*batch, strict=True)]
        messages = tables.messages(conn_ips, senders)
        assert [m[0] for m in messages] == [0, *[m[1] for m in messages[:-1]]]
        assert messages[-1][1] == len(batch)
        resolved = [pair for message in messages for pair in daemon.resolve(message)]
        assert resolved == batch


def test_a_repeat_carries_no_text_and_ids_are_reused_first_in_first_out() -> None:
    tables = ValueTables(4)
    daemon = ModelDaemon(4)
    (message,) = tables.messages(["a", "b", "a", None], ["x", "x", "y", "x"])
    assert message[2:4] == (0, ["a", "b"]) and message[5:7] == (0, ["x", "y"])
    daemon.resolve(message)
    (message,) = tables.messages(["b", "a"], ["y", "x"])
    assert message[3] == [] and message[6] == []  # all known: references only
    daemon.resolve(message)
    # Three new connection IPs in a table of 4 holding 2: the third takes id 0,
    # the oldest ("a"); ids 2, 3 then 0 are not one run, so two messages.
    messages = tables.messages(["c", "d", "e"], ["x", "x", "x"])
    assert [m[:4] for m in messages] == [(0, 2, 2, ["c", "d"]), (2, 3, 0, ["e"])]
    assert [p for m in messages for p in daemon.resolve(m)] == [("c", "x"), ("d", "x"), ("e", "x")]
    (message,) = tables.messages(["b"], ["x"])  # "b" (id 1) was not evicted
    assert message[2:4] == (0, [])
    (message,) = tables.messages(["a"], ["x"])  # "a" was: it takes id 1, the next oldest
    assert message[2:4] == (1, ["a"])


def test_a_message_ends_before_it_would_redefine_an_id_it_references() -> None:
    tables = ValueTables(2)
    daemon = ModelDaemon(2)
    (message,) = tables.messages(["a", "b"], ["x", "x"])
    daemon.resolve(message)
    # "a" (id 0) then "c", which must take id 0: a second message.
    messages = tables.messages(["a", "c", "a"], ["x", "x", "x"])
    assert [(m[0], m[1]) for m in messages] == [(0, 1), (1, 3)]
    pairs = [pair for m in messages for pair in daemon.resolve(m)]
    assert pairs == [("a", "x"), ("c", "x"), ("a", "x")]


def test_a_large_batch_of_long_values_is_cut_to_fit_a_frame() -> None:
    tables = ValueTables(4096)
    daemon = ModelDaemon(4096)
    values: list[str | None] = [f"{i:04}" + "ü" * 500 for i in range(2000)]
    messages = tables.messages(values, list(values))
    assert len(messages) > 1
    pairs = [pair for m in messages for pair in daemon.resolve(m)]
    assert pairs == list(zip(values, values, strict=True))


def test_every_step_of_numbering_new_values_offers_a_pause_and_changes_nothing() -> None:
    """The flusher may let go of the GIL between the steps of an interned batch
    (docs/performance-history.md: a step is a few array operations; a whole batch of new
    values took milliseconds). Each step offers a pause, from each place that has
    one, and the messages still resolve to exactly the values recorded."""
    sites: list[str] = []

    def between() -> None:
        sites.append(sys._getframe(1).f_code.co_name)

    # 64 ids, full after the first batch, so that new values evict (_forget);
    # 600 senders, split SPLIT_STEP at a time.
    tables = ValueTables(64)
    daemon = ModelDaemon(64)
    for b in range(4):
        conn_ips: list[str | None] = [f"192.0.{b}.{i}" for i in range(600)]
        senders: list[str | None] = [f"u{i}@d{i % 90 + b}.example" for i in range(600)]
        messages = tables.messages(conn_ips, senders, between, sent_senders)
        resolved = [pair for message in messages for pair in daemon.resolve(message)]
        assert resolved == list(zip(conn_ips, sent_senders(senders), strict=True))
    assert {"number", "_look_up", "_enter", "_forget", "messages", "_split_in_steps"} <= set(sites)
    assert sites.count("_split_in_steps") > 4 * 600 // value_tables.SPLIT_STEP
    # The encoder offers one more after each frame; a batch held already, none
    # but those.
    encoder = batch_encoder.BatchEncoder("interned", 64)
    sites.clear()
    _, ends = encoder.encode(["192.0.2.1"], ["a@b.example"], 2048, between)
    assert ends == [1] and "encode" in sites
    sites.clear()
    _, ends = encoder.encode(["192.0.2.1"], ["a@b.example"], 2048, between)
    assert ends == [1] and "_look_up" not in sites


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.lists(st.lists(st.tuples(VALUES, VALUES), min_size=1, max_size=40), max_size=6),
)
def test_a_map_too_small_forgets_values_and_messages_stay_right(
    size: int, batches: list[list[tuple[str | None, str | None]]]
) -> None:
    """With one row of 8 slots for up to 40 ids, full rows forget values (defined
    again when next sent) and evictions miss keys already forgotten: every
    message still resolves to exactly the values recorded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(value_tables, "SLOTS_PER_ID", 0)  # one row, whatever the size
        tables = ValueTables(size)
    daemon = ModelDaemon(size)
    for batch in batches:
        conn_ips, senders = [list(column) for column in zip(*batch, strict=True)]
        messages = tables.messages(conn_ips, senders)
        resolved = [pair for message in messages for pair in daemon.resolve(message)]
        assert resolved == batch


def test_interned_batches_are_larger_unless_the_client_chose() -> None:
    interned = batch_encoder.BatchEncoder("interned", 4096)
    columns = batch_encoder.BatchEncoder("columns")
    assert interned.batch_size(None, 512) == batch_encoder.INTERNED_BATCH_SIZE > 512
    assert columns.batch_size(None, 512) == 512
    assert interned.batch_size(100, 512) == columns.batch_size(100, 512) == 100


def test_a_value_too_long_for_any_message_raises_and_never_loops() -> None:
    # One value costing more than a column's half of a frame: halving its piece
    # again looped for ever (a client's flusher spun). It must raise, so that the
    # recorder mends the batch. In a subprocess with a deadline: a loop fails.
    code = (
        "from servertracker.errors import LocalProtocolError\n"
        "from servertracker.value_tables import ValueTables\n"
        "try:\n"
        "    ValueTables(16384).messages(['1.2.3.4'], ['x' * 131062])\n"
        "except LocalProtocolError:\n"
        "    print('raised')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == "raised\n"
