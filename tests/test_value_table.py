"""The interned value tables and the tracker's counting of them, pure (no daemon)."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertracker import protocol
from trackerd.core.interned import DEFINE_CHUNK, IPS, SENDERS
from trackerd.core.keyed_hash import C_CHUNK
from trackerd.core.tracker import Tracker
from trackerd.core.value_table import COUNTED, REJECTED, UNDEFINED, ValueTable, refs_of

NIL = protocol.INTERNED_NIL


def refs(*ids: int) -> np.ndarray:  # type: ignore[type-arg]
    return refs_of(struct.pack(f"<{len(ids)}I", *ids))


@pytest.mark.parametrize(
    ("first", "new", "ids", "text"),
    [
        (0, 1, (0, NIL), None),
        (7, 1, (7,), None),  # the last id
        (7, 2, (7, 8), protocol.TEXT_INTERNED_RANGE),  # definitions beyond the grant
        (0, 0, (8,), protocol.TEXT_INTERNED_RANGE),  # a reference beyond it
        (0, 0, (NIL, NIL), None),  # nil only
        (0, 0, (3,), protocol.TEXT_INTERNED_UNDEFINED),
        (0, 1, (0, 1), protocol.TEXT_INTERNED_UNDEFINED),
        (0, 2, (0,), protocol.TEXT_INTERNED_UNREFERENCED),
        (8, 0, (NIL,), None),  # first == granted with nothing new is within it
        (9, 0, (NIL,), protocol.TEXT_INTERNED_RANGE),
        # The order: a range error before an undefined id before an unreferenced one.
        (0, 2, (3, 9), protocol.TEXT_INTERNED_RANGE),
        (0, 2, (3,), protocol.TEXT_INTERNED_UNDEFINED),
    ],
)
def test_violations_in_the_documented_order(
    first: int, new: int, ids: tuple[int, ...], text: str | None
) -> None:
    table = ValueTable(8)
    assert table.violation(first, new, refs(*ids)) == text
    assert text is None or text in protocol.ERROR_TEXTS


def test_definitions_are_applied_and_resolved() -> None:
    tracker = Tracker(salt=bytes(32))
    tables = tracker.value_tables(16)
    values = ["192.0.2.1", "not-an-ip", "", "192.0.2.1"]
    assert tracker.define_into(tables, IPS, 3, values) == 4
    ids, codes = tables.ips.resolve(refs(3, NIL, 4, 5, 6, 2))
    assert ids.tolist() == [3, 4, 5, 6, 2]
    assert codes.tolist()[:2] == [COUNTED, REJECTED]
    assert codes[4] == UNDEFINED
    # The same value twice: the same digest, queued once (normalised once).
    assert tables.ips.digests[3] == tables.ips.digests[6] != 0
    assert tracker.status().unique_conn_ips == 1


@pytest.mark.parametrize("c_first_sightings", [True, False])
def test_a_deadline_stops_definitions_after_the_chunk_it_passed_in(
    c_first_sightings: bool,
) -> None:
    tracker = Tracker(salt=bytes(32), c_first_sightings=c_first_sightings)
    # DEFINE_CHUNK misses at a time through normalise.py, C_CHUNK where C decides them.
    chunk = C_CHUNK if tracker._first is not None else DEFINE_CHUNK
    senders = [f"u@d{i}.example" for i in range(3 * chunk)]
    done, found = tracker.define_values(SENDERS, senders, 0.0)
    # A chunk at a time: the first one (plain names, decided in one pass) at most.
    assert 1 <= done <= chunk and found.codes.size == done
    assert tracker.define_values(SENDERS, senders)[0] == len(senders)


def test_the_tables_and_caches_hold_no_cleartext() -> None:
    tracker = Tracker(salt=bytes(32))
    tables = tracker.value_tables(64)
    ip, domain = "198.51.100.77", "secret-marker.example"
    tracker.define_into(tables, IPS, 0, [ip, "not-an-ip-marker"])
    tracker.define_into(tables, SENDERS, 0, [f"someone@{domain}", "[203.0.113.9]"])
    tracker.count_references(tables, refs(0, 1), refs(0, 1))
    blobs = [
        bytes(array)
        for table in (tables.ips, tables.senders)
        for array in (table.codes, table.digests, table.periods, table.fleet_epochs)
        if array is not None
    ]
    packed = [ipaddress.ip_address(each).packed for each in (ip, "203.0.113.9")]
    for blob in blobs:
        for needle in (ip.encode(), domain.encode(), b"someone", b"marker", *packed):
            assert needle not in blob
    # The definition caches: hash() keys, codes and digests, never a string.
    for cache in tracker._defined:
        assert len(cache) == 2
        for array in (cache._keys, cache.codes, cache.digests):
            for needle in (ip.encode(), domain.encode(), b"someone", b"marker", *packed):
                assert needle not in bytes(array)


def test_counting_references_matches_columns() -> None:
    a, b = (Tracker(salt=bytes(32), clock=lambda: 1.0) for _ in range(2))
    ips = ["192.0.2.1", "bad", None, "192.0.2.1", "::1"]
    senders = ["a@b.example", "<>", "[192.0.2.1]", None, "bad@@"]
    a.record_columns(ips, senders)
    tables = b.value_tables(8)
    b.define_into(tables, IPS, 0, ["192.0.2.1", "bad", "::1"])
    b.define_into(tables, SENDERS, 2, ["a@b.example", "<>", "[192.0.2.1]", "bad@@"])
    b.count_references(tables, refs(0, 1, NIL, 0, 2), refs(2, 3, 4, NIL, 5))
    assert a.status() == b.status()
    assert (a.records, a.rejected_conn_ips, a.rejected_senders) == (5, 1, 1)


@pytest.mark.parametrize(
    ("column", "plain", "odd"),
    [
        (IPS, [f"10.0.{n // 256}.{n % 256}" for n in range(300)], ["", " 10.0.0.1", "::1", "x"]),
        (
            SENDERS,
            [f"mail{n % 40}.example.com" if n % 3 else f"[192.0.2.{n % 200}]" for n in range(300)],
            ["<>", "bad@@", "Mail1.Example.COM.", "u@xn--bcher-kva.de"],
        ),
    ],
)
def test_new_values_come_to_the_same_on_the_batch_and_the_exact_path(
    column: int, plain: list[str], odd: list[str]
) -> None:
    """A batch of plain values (stored whole: _store_ips, _store_senders) and the same
    values beside odd ones (stored one by one) come to the same codes and digests,
    and to what record_columns() counts."""
    whole, mixed, columns = (Tracker(salt=bytes(32), clock=lambda: 1.0) for _ in range(3))
    done, found = whole.define_values(column, plain)
    assert done == len(plain)
    values = [*odd[:2], *plain, *odd[2:]]
    _, found_mixed = mixed.define_values(column, values)
    assert found.codes.tolist() == found_mixed.codes[2 : 2 + len(plain)].tolist()
    assert found.digests.tolist() == found_mixed.digests[2 : 2 + len(plain)].tolist()
    assert (found.codes >= COUNTED).all() and (found.digests != 0).all()
    # Again from the definition cache: the same.
    _, cached = whole.define_values(column, plain)
    assert cached.codes.tolist() == found.codes.tolist()
    assert cached.digests.tolist() == found.digests.tolist()
    # Counted, they are what record_columns() counts.
    other_value = "a@b.example" if column == IPS else "192.0.2.1"
    ip_column, sender_column = (values, [other_value] * len(values))[:: 1 if column == IPS else -1]
    columns.record_columns(ip_column, sender_column)
    tables = mixed.value_tables(512)
    mixed.define_into(tables, column, 0, values)
    mixed.define_into(tables, 1 - column, 0, [other_value])
    mine, theirs = refs(*range(len(values))), refs(*[0] * len(values))
    mixed.count_references(tables, *((mine, theirs) if column == IPS else (theirs, mine)))
    assert mixed.status() == columns.status()


def _violation_by_hand(codes: list[int], first: int, new: int, ids: list[int]) -> str | None:
    """docs/protocol.md's checks, one reference at a time."""
    size = len(codes)
    ids = [i for i in ids if i != NIL]
    if first + new > size or any(i >= size for i in ids):
        return protocol.TEXT_INTERNED_RANGE
    if any(not first <= i < first + new and not codes[i] for i in ids):
        return protocol.TEXT_INTERNED_UNDEFINED
    if set(range(first, first + new)) - set(ids):
        return protocol.TEXT_INTERNED_UNREFERENCED
    return None


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    st.lists(st.sampled_from([UNDEFINED, COUNTED, REJECTED]), min_size=1, max_size=10),
    st.integers(0, 11),
    st.integers(0, 4),
    st.lists(st.one_of(st.integers(0, 12), st.just(NIL)), min_size=1, max_size=12),
)
def test_violation_agrees_with_the_checks_one_by_one(
    codes: list[int], first: int, new: int, ids: list[int]
) -> None:
    table = ValueTable(len(codes))
    table.codes[:] = codes
    assert table.violation(first, new, refs(*ids)) == _violation_by_hand(codes, first, new, ids)
