"""Sliding-window distinct counts: the pure parts with a clock the test moves,
then a real trackerd with second-long windows."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable

import numpy as np
import pytest

from servertracker.status import Status, WindowCounts, read_status_file
from tests.conftest import Daemon, trackerctl, wait_for
from trackerd.core import digest_table
from trackerd.core.digest_table import DigestTable, sorted_unique
from trackerd.core.distinct_counter import FLUSH_AT, DistinctCounter
from trackerd.core.interned import IPS, SENDERS
from trackerd.core.sliding_hyperloglog import SlidingHyperLogLog
from trackerd.core.tracker import Tracker
from trackerd.core.windows import LastSeenTable, Window, parse_windows, period_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def window(status: Status, name: str) -> WindowCounts:
    return next(w for w in status.windows if w.window == name)


def test_parse_windows() -> None:
    assert parse_windows("1h,24h") == (Window("1h", 3600), Window("24h", 86400))
    assert parse_windows(" 7d, 90s ,15m") == (
        Window("90s", 90),
        Window("15m", 900),
        Window("7d", 604800),
    )
    assert parse_windows("none") == ()
    assert parse_windows("") == ()
    for bad in ("1x", "h", "0s", "1h,60m", "-1h", "400d", "1.5h", ",".join(["1s"] * 2)):
        with pytest.raises(ValueError):
            parse_windows(bad)


def test_values_appear_repeat_and_age_out() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("10s,1h"), monotonic=clock)
    tracker.record_pairs([("192.0.2.1", "a@example.com"), ("192.0.2.2", "b@[198.51.100.7]")])
    status = tracker.status()
    assert window(status, "10s") == WindowCounts("10s", 10, 2, 1, 1)
    assert window(status, "1h") == WindowCounts("1h", 3600, 2, 1, 1)
    clock.now += 6
    tracker.record_pairs([("192.0.2.1", "a@example.com")])  # seen again
    clock.now += 6  # 13 s after the first sighting, 6 s after the second
    status = tracker.status()
    assert window(status, "10s") == WindowCounts("10s", 10, 1, 1, 0)
    assert window(status, "1h") == WindowCounts("1h", 3600, 2, 1, 1)
    assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (2, 1, 1)
    clock.now += 11
    assert window(tracker.status(), "10s") == WindowCounts("10s", 10, 0, 0, 0)
    clock.now += 3600
    assert window(tracker.status(), "1h") == WindowCounts("1h", 3600, 0, 0, 0)
    assert tracker.status().unique_conn_ips == 2  # since boot: never ages


def test_window_edges_to_the_second() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("5s"), monotonic=clock)
    clock.now += 0.5
    tracker.record_server("192.0.2.1", None)
    clock.now += 0.5  # its period (a second) ended
    assert tracker.status().windows[0].unique_conn_ips == 1
    clock.now += 5  # the window's length after the end of its period: still in
    assert tracker.status().windows[0].unique_conn_ips == 1
    clock.now += 1  # the window, a period and a second after the sighting: out
    assert tracker.status().windows[0].unique_conn_ips == 0


def test_period_is_a_sixtieth_of_the_shortest_window() -> None:
    assert period_of(parse_windows("1h,24h")) == 60
    assert period_of(parse_windows("10m,7d")) == 10
    assert period_of(parse_windows("5s")) == 1
    assert period_of(parse_windows("7d")) == 60


def test_values_in_the_raw_value_cache_are_refreshed_too() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("10s"), monotonic=clock)
    if not tracker.raw_cache_entries:
        pytest.skip("PYTHONHASHSEED is set: the raw-value cache is off")
    tracker.record_pairs([("192.0.2.1", "a@example.com")] * 3)
    tracker.status()
    clock.now += 8
    cache = tracker._conn_cache
    assert cache.key("192.0.2.1") in cache  # the next sighting would be a hit
    tracker.record_pairs([("192.0.2.1", "a@example.com")])
    clock.now += 8  # 16 s after the first sighting, 8 after the second
    assert tracker.status().windows[0] == WindowCounts("10s", 10, 1, 1, 0)
    clock.now += 4
    assert tracker.status().windows[0] == WindowCounts("10s", 10, 0, 0, 0)


def test_repeats_within_a_period_cost_no_counter_work() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("1h"), monotonic=clock)  # 60 s periods
    if not tracker.raw_cache_entries:
        pytest.skip("PYTHONHASHSEED is set: the raw-value cache is off")
    tracker.record_server("192.0.2.1", "a@example.com")
    tracker.status()
    clock.now += 30
    tracker.record_server("192.0.2.1", "a@example.com")
    assert not any(counter.pending for counter in tracker.counters)
    clock.now += 31  # the next period: a miss again, so stamped again
    tracker.record_server("192.0.2.1", "a@example.com")
    assert tracker.counters[0].pending


def test_interned_references_in_a_new_period_flush_in_bounded_batches() -> None:
    """Every id of a large interned table referenced again in a new period: the
    digests queued again reach the table FLUSH_AT or so at a time, never as one
    flush of all of them at the next count (which held the event loop for
    seconds), and the counts stay exact."""
    clock = Clock()
    tracker = Tracker(windows=parse_windows("1h"), monotonic=clock)  # 60 s periods
    n = 2 * FLUSH_AT + 100
    tables = tracker.value_tables(n)
    ips = [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(n)]
    tracker.define_into(tables, IPS, 0, ips)
    tracker.define_into(tables, SENDERS, 0, [f"x@d{i}.example" for i in range(n)])
    every = np.arange(n, dtype=np.uint32)
    tracker.count_references(tables, every, every)
    assert tracker.status().unique_conn_ips == n
    flushed: list[int] = []
    for counter in tracker.counters:
        original = counter.flush

        def watched(
            counter: DistinctCounter = counter, original: Callable[[], None] = original
        ) -> None:
            flushed.append(sum(len(chunk) // 8 for chunk in counter.pending))
            original()

        counter.flush = watched  # type: ignore[method-assign]
    clock.now += 61  # the next period: every reference queues its digest again
    tracker.count_references(tables, every, every)  # one message of n references
    queued = [sum(len(chunk) // 8 for chunk in c.pending) for c in tracker.counters]
    assert max(queued) < FLUSH_AT
    assert flushed  # during the message, not left for the next count
    status = tracker.status()
    assert (status.unique_conn_ips, status.unique_domains) == (n, n)
    assert window(status, "1h") == WindowCounts("1h", 3600, n, n, 0)
    assert max(flushed) <= 2 * FLUSH_AT  # the status' own flush too


def test_without_the_raw_value_cache() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("10s"), monotonic=clock)
    tracker.raw_cache_entries = 0
    tracker.record_server("192.0.2.1", "a@example.com")
    clock.now += 8
    tracker.record_server("192.0.2.1", "a@example.com")
    clock.now += 8
    assert tracker.status().windows[0] == WindowCounts("10s", 10, 1, 1, 0)


def test_last_seen_survives_the_table_growing() -> None:
    table = LastSeenTable()
    rng = np.random.default_rng(7)
    first = rng.integers(1, 2**64 - 1, size=1000, dtype=np.uint64)
    table.add_stamped(first, 5)
    later = rng.integers(1, 2**64 - 1, size=50_000, dtype=np.uint64)
    table.add_stamped(later, 9)  # rehashes several times
    assert table.count_since(9) == 50_000
    assert table.count_since(5) == 51_000
    keys, stamps = table.stamped_values()
    assert set(stamps[np.isin(keys, first)]) == {5}


@pytest.mark.parametrize("n", [1000, 30_000, 300_000])
def test_sliding_sketch_within_two_percent(n: int) -> None:
    sketch = SlidingHyperLogLog()
    rng = np.random.default_rng(n)
    old = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64)
    new = rng.integers(0, 2**64 - 1, size=n // 2, dtype=np.uint64)
    sketch.add_many(old, 3)
    sketch.add_many(new, 8)
    assert sketch.estimate_since(8) == pytest.approx(n // 2, rel=0.02)
    assert sketch.estimate_since(1) == pytest.approx(n + n // 2, rel=0.02)
    assert sketch.estimate_since(9) == 0


def test_windows_across_the_switch_to_an_estimate() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("10s,1h"), monotonic=clock, max_exact=500)
    early = [(f"10.0.{i >> 8}.{i & 255}", f"x@d{i}.example") for i in range(3000)]
    for start in range(0, 3000, 100):
        tracker.record_pairs(early[start : start + 100])
    clock.now += 20
    late = [(f"10.1.{i >> 8}.{i & 255}", f"x@e{i}.example") for i in range(2000)]
    tracker.record_pairs(late)
    tracker.record_pairs(early[:1000])  # seen again: back in the short window
    clock.now += 1
    status = tracker.status()
    assert set(status.estimated) == {"unique_conn_ips", "unique_domains"}
    short, long = window(status, "10s"), window(status, "1h")
    assert short.unique_conn_ips == pytest.approx(3000, rel=0.02)
    assert short.unique_domains == pytest.approx(3000, rel=0.02)
    assert long.unique_conn_ips == pytest.approx(5000, rel=0.02)
    assert long.unique_conn_ips <= status.unique_conn_ips
    clock.now += 11
    assert window(tracker.status(), "10s").unique_conn_ips == 0


def test_counter_switch_keeps_each_value_s_last_sighting() -> None:
    counter = DistinctCounter("unique_conn_ips", max_exact=1500, windowed=True)
    rng = np.random.default_rng(3)
    digests = [d.tobytes() for d in rng.integers(0, 2**64 - 1, size=2000, dtype=np.uint64)]
    counter.stamp = 4
    counter.pending.extend(digests[:1000])
    counter.flush()
    assert not counter.estimated
    counter.stamp = 7
    counter.pending.extend(digests[1000:])
    counter.flush()  # past the bound: the stamps move into the sliding sketch
    assert counter.estimated
    assert counter.count_since(7) == pytest.approx(1000, rel=0.02)
    assert counter.count_since(4) == pytest.approx(2000, rel=0.02)
    assert counter.count_since(8) == 0


def test_no_windows_costs_nothing() -> None:
    tracker = Tracker(windows=())
    tracker.record_server("192.0.2.1", "a@example.com")
    assert tracker.status().windows == ()
    assert type(tracker.counters[0]._table) is DigestTable


# --- a real daemon --------------------------------------------------------------------

SHORT = 3  # seconds; the long window (60 s) cannot age out while a slow test runs


def seen_in_short_window(daemon: Daemon, pairs: list[tuple[str, str]], expected: int) -> Status:
    """Record, then watch the short window show them (a second later, when their
    period ended). Retried if the machine was too slow to look within the window."""
    name = f"{SHORT}s"

    def attempt() -> Status | None:
        with daemon.connect() as conn:
            conn.record(pairs)
            conn.ping()
        recorded = time.monotonic()
        while time.monotonic() - recorded < SHORT:
            status = daemon.status()
            if window(status, name).unique_conn_ips >= expected:
                return status
            time.sleep(0.05)
        return None

    return wait_for(attempt, 60, f"{expected} values in the {name} window")


@pytest.mark.parametrize("max_exact", [100_000, 20], ids=["exact", "estimated"])
def test_daemon_windows_appear_repeat_and_age_out(
    make_daemon: Callable[..., Daemon], max_exact: int
) -> None:
    daemon = make_daemon(
        extra_args=["--windows", f"60s,{SHORT}s", "--max-exact-entries", str(max_exact)]
    ).start()
    pairs = [(f"192.0.2.{i}", f"a@d{i}.example") for i in range(50)]
    estimated = max_exact < 50
    low, high = (49, 51) if estimated else (50, 50)  # 2% of 50 is one
    seen_in_short_window(daemon, pairs, low)

    def long_window_shows_them() -> Status | None:
        status = daemon.status()
        return status if window(status, "60s").unique_domains >= low else None

    status = wait_for(long_window_shows_them, 10, "the 60s window to show them")
    assert ("unique_conn_ips" in status.estimated) == estimated
    assert [w.window for w in status.windows] == [f"{SHORT}s", "60s"]
    for counts in status.windows:
        assert low <= counts.unique_conn_ips <= high
        assert low <= counts.unique_domains <= high
    # Ageing out, with no traffic at all; the status file follows too.
    wait_for(
        lambda: window(daemon.status(), f"{SHORT}s").unique_conn_ips == 0,
        SHORT + 20,
        "the short window to empty",
    )
    wait_for(
        lambda: window(read_status_file(daemon.runtime_dir), f"{SHORT}s").unique_domains == 0,
        10,
        "the status file's short window to empty",
    )
    status = daemon.status()
    assert low <= window(status, "60s").unique_conn_ips <= high
    assert low <= status.unique_conn_ips <= high
    # Repeating: values seen again count again in the short window; since boot, not.
    status = seen_in_short_window(daemon, pairs[:10], 10)
    assert window(status, f"{SHORT}s").unique_conn_ips <= (11 if estimated else 10)
    assert low <= status.unique_conn_ips <= high
    data = json.loads((daemon.runtime_dir / "server_tracker.json").read_text())
    assert [w["window"] for w in data["windows"]] == [f"{SHORT}s", "60s"]


def test_daemon_refuses_bad_windows(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_args=["--windows", "1h,fortnight"])
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(30) == 2
    assert "--windows" in daemon.log() and "Traceback" not in daemon.log()


def test_status_and_watch_show_each_window(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_args=["--windows", "1h,24h"]).start()
    with daemon.connect() as conn:
        conn.record([("192.0.2.1", "a@example.com"), ("192.0.2.2", "b@[192.0.2.9]")])
        conn.ping()

    def output(*args: str) -> str:
        result = trackerctl(
            *args, "--runtime-dir", str(daemon.runtime_dir), env={"PYTHONIOENCODING": "utf-8"}
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    status = output("status")
    assert "last 1h  last 24h" in status
    assert any(line.split() == ["Connection", "IPs:", "2", "2"] for line in status.splitlines())
    screen = output("watch", "--count", "3", "--interval", "0.2")
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "since boot" in line)
    assert "per second" in header and "last 1h" in header and "last 24h" in header
    rows = [line.split() for line in lines if line.startswith("  Connection IPs")]
    assert rows[0][2:] == ["2", "-", "2", "2"]  # no rate before a second refresh
    assert rows[-1][:4] == ["Connection", "IPs", "2", "0.0"]
    assert rows[-1][4:6] == ["2", "2"] and len(rows[-1]) == 7  # and a sparkline


def test_each_key_is_stamped_where_the_insert_put_or_found_it() -> None:
    # _insert() reports each key's slot (LastSeenTable stamps there, without a
    # look-up): it must be the slot find_slots() gives, for keys new or known,
    # crowded onto a few home slots so that they probe past each other.
    rng = np.random.default_rng(11)
    crowded = (rng.integers(0, 8, size=3000, dtype=np.uint64) << np.uint64(58)) | rng.integers(
        1, 1 << 40, size=3000, dtype=np.uint64
    )
    table = LastSeenTable()
    table.add_stamped(crowded[:1000], 3)
    table.add_stamped(crowded, 4)  # a third known, the rest new; grows the table
    table.add_stamped(crowded[500:1500], 6)
    keys, stamps = table.stamped_values()
    expected = {int(k): 4 for k in crowded}
    expected.update({int(k): 6 for k in crowded[500:1500]})
    assert dict(zip(keys.tolist(), stamps.tolist(), strict=True)) == expected
    slots = np.empty(3, dtype=np.intp)
    ordered = sorted_unique(crowded[:3])
    digest_table._insert(table._table, table._shift, ordered, slots)
    assert slots.tolist() == table.slots_of(ordered).tolist()
