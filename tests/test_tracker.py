"""The tracker core: keyed hashes, the three sets, the tallies, and the salt kept private."""

from __future__ import annotations

import pickle

from trackerd.digest_table import Digests
from trackerd.tracker import SALT_SIZE, Tracker


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
