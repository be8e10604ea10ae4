"""The tracker core: keyed hashes, the three sets, the tallies, and the salt kept private."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackerd.core.digest_table import Digests
from trackerd.core.keyed_hash import C_CHUNK
from trackerd.core.normalise import REJECTED, Category, classify_conn_ip, classify_sender
from trackerd.core.raw_cache import CRawCache
from trackerd.core.tracker import SALT_SIZE, SPLIT_CHUNK, Tracker


def stored_digests(tracker: Tracker) -> list[Digests]:
    """What each exact counter keeps, for looking into it."""
    tracker.status()  # flushes the pending digests
    return [c._table.values() for c in tracker.counters]  # type: ignore[union-attr]


def test_equivalent_forms_count_once() -> None:
    tracker = Tracker()
    tracker.record_pairs(
        [
            ("1.2.3.4", "user@Bücher.de"),
            ("[1.2.3.4]", "xn--bcher-kva.de."),
            ("::ffff:1.2.3.4", "<other@BÜCHER.DE>"),
            ("2001:db8::1", "user@[IPv6:2001:DB8:0::1]"),
            ("[IPv6:2001:db8:0::1]", "2001:db8::1"),
            ("2001:db8::1", "x@[1.2.3.4]"),
        ]
    )
    status = tracker.status()
    assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (2, 1, 2)
    assert status.records == 6
    assert (status.rejected_conn_ips, status.rejected_senders) == (0, 0)


def test_ignored_and_rejected_are_tallied_apart() -> None:
    tracker = Tracker()
    tracker.record_pairs(
        [
            ("", "<>"),
            (None, None),
            ("not-an-ip", "user@"),
            ("1.2.3.4", "garbage here"),
        ]
    )
    status = tracker.status()
    assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (1, 0, 0)
    assert (status.rejected_conn_ips, status.rejected_senders) == (1, 2)
    assert status.records == 4


def test_same_value_in_two_categories_counts_in_each() -> None:
    tracker = Tracker()
    tracker.record_server("1.2.3.4", "1.2.3.4")
    status = tracker.status()
    assert (status.unique_conn_ips, status.unique_ip_servers) == (1, 1)


def test_salt_is_random_and_not_kept_as_an_attribute() -> None:
    salt = b"S" * SALT_SIZE
    tracker = Tracker(salt=salt)
    tracker.record_server("192.0.2.7", "user@example.com")
    assert salt not in repr(tracker).encode()
    for value in vars(tracker).values() if hasattr(tracker, "__dict__") else ():
        assert value != salt
    # Digests differ between two trackers: each start has its own salt.
    a, b = Tracker(), Tracker()
    a.record_server("192.0.2.7", None)
    b.record_server("192.0.2.7", None)
    assert stored_digests(a)[0].tolist() != stored_digests(b)[0].tolist()


def test_no_cleartext_in_the_sets() -> None:
    tracker = Tracker()
    tracker.record_server("192.0.2.7", "user@secret-domain.example")
    dump = b"".join(digests.tobytes() for digests in stored_digests(tracker))
    for cleartext in (b"192.0.2.7", b"secret-domain", b"secret-domain.example"):
        assert cleartext not in dump


def test_tracker_cannot_be_pickled_with_its_key() -> None:
    tracker = Tracker()
    try:
        pickle.dumps(tracker)
    except TypeError:
        return  # blake2b objects refuse pickling: the key cannot leave this way
    raise AssertionError("a Tracker pickled; its key could leave the process")


def test_boot_time_from_clock() -> None:
    tracker = Tracker(clock=lambda: 1000.5)
    status = tracker.status()
    assert status.boot_time == 1000
    assert status.updated_time == 1000.5


def test_the_raw_value_cache_changes_no_count() -> None:
    pairs = [(f"10.0.0.{i % 50}", f"<u{i % 3}@D{i % 40}.example>") for i in range(2000)]
    pairs += [("bogus", "user@"), ("bogus", "user@"), ("", "<>"), ("192.0.2.1", "x@[1.2.3.4]")] * 10
    cached, uncached = Tracker(), Tracker()
    uncached.raw_cache_entries = 0
    for tracker in (cached, uncached):
        for start in range(0, len(pairs), 100):
            tracker.record_pairs(pairs[start : start + 100])
    a, b = cached.status(), uncached.status()
    assert (a.unique_conn_ips, a.unique_domains, a.unique_ip_servers) == (51, 40, 1)
    assert (a.unique_conn_ips, a.unique_domains, a.unique_ip_servers, a.records) == (
        b.unique_conn_ips, b.unique_domains, b.unique_ip_servers, b.records)  # fmt: skip
    # Rejections count every time they arrive, cached or not.
    assert (
        (a.rejected_conn_ips, a.rejected_senders)
        == (b.rejected_conn_ips, b.rejected_senders)
        == (20, 20)
    )
    # 50 addresses, 192.0.2.1, bogus and the empty value; the cache is off in the other.
    assert len(cached._conn_cache) == 53 and len(uncached._conn_cache) == 0


@pytest.mark.parametrize("c_first_sightings", [True, False])
def test_the_raw_value_cache_holds_no_cleartext(c_first_sightings: bool) -> None:
    """With first sightings in C (where built), the domain-part cache stays empty:
    C decides the usual senders; without, it holds digests only."""
    tracker = Tracker(c_first_sightings=c_first_sightings)
    tracker.record_pairs([("203.0.113.77", "someone@secret-domain.example")])
    dump = b""
    for cache in (tracker._conn_cache, tracker._sender_cache):
        assert len(cache) == 1
        if isinstance(cache, CRawCache):
            # Its state is the C table's (64-bit keys, the SipHash keys, no text); the
            # Python object holds the table and its bound methods.
            assert set(vars(cache)) == {"_table", "key", "code", "put", "clear"}
            assert not hasattr(cache._table, "__dict__")
            dump += cache._table.contents()
            continue
        # Its only state: the table of 64-bit keys (and a random empty marker).
        assert {name: type(value) for name, value in vars(cache).items()} == {
            "_mask": np.int64, "_row_mask": int, "_empty": np.int64,
            "_table": np.ndarray}  # fmt: skip
        assert cache._table.dtype == np.int64
        dump += cache._table.tobytes()
    assert bool(tracker._domain_cache) is (tracker._first is None)
    if tracker._first is not None:
        assert not hasattr(tracker._first, "__dict__")  # its state is C memory
    for key, value in tracker._domain_cache.items():
        assert type(key) is int
        assert type(value) is tuple and type(value[1]) is bytes
    dump += repr(tracker._domain_cache).encode()
    for secret in ("203.0.113.77", "secret-domain"):
        assert secret.encode() not in dump and secret.encode("utf-16-le") not in dump


def test_the_raw_value_caches_are_bounded() -> None:
    tracker = Tracker(raw_cache_slots=64)
    tracker.raw_cache_entries = 100
    size = tracker._conn_cache.nbytes
    tracker.record_pairs([(f"10.0.{i // 256}.{i % 256}", f"u@d{i}.example") for i in range(1000)])
    assert len(tracker._conn_cache) <= 64 and tracker._conn_cache.nbytes == size
    assert len(tracker._sender_cache) <= 128 and len(tracker._domain_cache) <= 100
    status = tracker.status()
    assert (status.unique_conn_ips, status.unique_domains) == (1000, 1000)


def test_the_cache_is_off_when_the_hash_secret_is_fixed() -> None:
    code = "from servertracker.hash_keys import hash_is_secret; print(hash_is_secret())"
    for seed, expected in (("0", "False"), ("1234", "False"), ("random", "True")):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True
        ).stdout
        assert out.strip() == expected, seed


PAIR_VALUES = st.sampled_from(
    ["192.0.2.1", "192.0.2.2", "[192.0.2.1]", "bogus", "", None, "2001:db8::1"]
)
SENDER_VALUES = st.sampled_from(
    ["<a@example.com>", "<b@Example.COM>", "a@example.org", "<>", "", None, "user@",
     "<x@[192.0.2.9]>", "example.net", "<a@b", "<bad\nline@example.com>"]
)  # fmt: skip


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.tuples(PAIR_VALUES, SENDER_VALUES), max_size=40))
def test_a_batch_counts_as_its_pairs_one_by_one(pairs: list[tuple[str | None, str | None]]) -> None:
    """Duplicates inside a batch, misses and hits mixed: the batch path counts
    exactly what recording each pair alone counts."""
    batched, one_by_one = Tracker(salt=b"s" * 32), Tracker(salt=b"s" * 32)
    batched.record_pairs([list(pair) for pair in pairs])
    for conn_ip, sender in pairs:
        one_by_one.record_server(conn_ip, sender)
    a, b = batched.status(), one_by_one.status()
    assert replace(a, updated_time=0) == replace(b, updated_time=0, boot_time=a.boot_time)


def reference_counts(pairs: list[tuple[str | None, str | None]]) -> tuple[int, ...]:
    """What the counting rules say, from normalise.py alone: no cache, no batch."""
    keys: list[set[bytes]] = [set(), set(), set()]
    rejected = [0, 0]
    for conn_ip, sender in pairs:
        ip = classify_conn_ip(conn_ip)
        if type(ip) is bytes:
            keys[Category.CONN_IP].add(ip)
        rejected[0] += ip is REJECTED
        classified = classify_sender(sender)
        if type(classified) is tuple:
            keys[classified[0]].add(classified[1])
        rejected[1] += classified is REJECTED
    return (*map(len, keys), len(pairs), *rejected)


def tracker_counts(tracker: Tracker) -> tuple[int, ...]:
    s = tracker.status()
    return (s.unique_conn_ips, s.unique_domains, s.unique_ip_servers, s.records,
            s.rejected_conn_ips, s.rejected_senders)  # fmt: skip


SENDER_FORMS = st.one_of(
    SENDER_VALUES,
    st.builds(
        lambda user, domain, form: form.format(u=user, d=domain),
        st.sampled_from(["u", "U2", "a.b", "@r:u", ""]),
        st.sampled_from(["ex.com", "EX.com.", "[192.0.2.9]", "192.0.2.9", "b\u00fccher.de",
                         "xn--bcher-kva.de", "", "a b", "<", "[1.2.3.4", "@x"]),
        st.sampled_from(["{d}", "{u}@{d}", "<{u}@{d}>", " <{u}@{d}> ", "<{d}>", "{u}@{d}>",
                         "<{u}@{d}", "{u}@@{d}", "\t{d}\n", "{d}\u2028"]),
    ),
    st.text(alphabet="ab@<>[] .:\n\t1", max_size=12),
)  # fmt: skip


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(st.tuples(PAIR_VALUES, SENDER_FORMS), max_size=60),
    st.integers(min_value=1, max_value=20),
)
def test_the_columns_path_counts_what_the_rules_say(
    pairs: list[tuple[str | None, str | None]], batch: int
) -> None:
    """record_columns(), with its caches by raw text and by domain part, in batches
    of any size and with every value seen twice, counts exactly what normalise.py's
    rules say for each pair alone."""
    tracker = Tracker()
    for _ in range(2):  # the second time, everything is a cache hit
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            tracker.record_columns([p[0] for p in chunk], [p[1] for p in chunk])
    expected = reference_counts(pairs)
    assert tracker_counts(tracker) == (*expected[:3], *(2 * n for n in expected[3:]))


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.tuples(PAIR_VALUES, SENDER_FORMS), min_size=1, max_size=40))
def test_a_passed_deadline_counts_from_the_first_pair_on_and_says_how_far(
    pairs: list[tuple[str | None, str | None]],
) -> None:
    """With a deadline long gone, record_columns() stops after its first cache miss
    and says how many pairs it counted (at least one); going on from there, call
    after call, counts exactly what one call without a deadline counts."""
    tracker = Tracker()
    conn_ips, senders = [p[0] for p in pairs], [p[1] for p in pairs]
    start = 0
    while start < len(pairs):
        done = tracker.record_columns(conn_ips[start:], senders[start:], deadline=0.0)
        assert 1 <= done <= len(pairs) - start
        assert tracker.records == start + done
        start += done
    whole = Tracker()
    assert whole.record_columns(conn_ips, senders) == len(pairs)
    assert tracker_counts(tracker) == tracker_counts(whole)


@pytest.mark.parametrize("c_first_sightings", [True, False])
def test_a_passed_deadline_stops_after_the_first_chunk_of_misses(c_first_sightings: bool) -> None:
    # New connection IPs are normalised SPLIT_CHUNK at a time (each costs at most a
    # few µs), or C_CHUNK at a time where C decides them; the clock is read after
    # each chunk.
    tracker = Tracker(c_first_sightings=c_first_sightings)
    chunk = C_CHUNK if tracker._first is not None else SPLIT_CHUNK
    ips = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(chunk + 10)]
    senders = ["u@example.com"] * len(ips)
    assert tracker.record_columns(ips, senders, deadline=0.0) == chunk
    assert tracker.status().records == chunk
    # Cache hits cost no clock reading: the first IPs again, and nothing else new.
    assert tracker.record_columns(ips[:5] * 5, senders[:25], deadline=0.0) == 25


def test_a_passed_deadline_stops_after_the_first_costly_domain_part() -> None:
    # Plain host names are decided a batch at a time; any other new domain part
    # (an IDNA name here) one at a time, the clock read after each.
    for plain in (2, 5, 8):
        tracker = Tracker()
        senders = [f"u@mail{i}.example.com" for i in range(plain)] + [
            f"u@bücher{i}.example" for i in range(5)
        ]
        ips = ["192.0.2.1"] * len(senders)
        assert tracker.record_columns(ips, senders, deadline=0.0) == plain + 1
        assert tracker_counts(tracker) == (1, plain + 1, 0, plain + 1, 0, 0)


def test_columns_of_unequal_length_are_refused() -> None:
    tracker = Tracker()
    with pytest.raises(ValueError):
        tracker.record_columns(["192.0.2.1"], [])
    assert tracker.status().records == 0
