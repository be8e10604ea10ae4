"""Sliding-window distinct counts: the pure parts with a clock the test moves,
then a real trackerd with second-long windows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pytest

from servertracker.status import Status, WindowCounts, read_status_file
from tests.conftest import Daemon, wait_for
from trackerd.core.distinct_counter import DistinctCounter
from trackerd.core.sliding_hyperloglog import SlidingHyperLogLog
from trackerd.core.tracker import Tracker
from trackerd.core.windows import LastSeenTable, Window, parse_windows


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
    clock.now += 6  # 12 s after the first sighting, 6 s after the second
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
    tracker.record_server("192.0.2.1", None)
    clock.now += 5  # exactly the window's length ago: still in
    assert tracker.status().windows[0].unique_conn_ips == 1
    clock.now += 2  # more than a second past it: out
    assert tracker.status().windows[0].unique_conn_ips == 0


def test_raw_value_cache_hits_refresh_the_last_sighting() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("10s"), monotonic=clock)
    if not tracker.raw_cache_entries:
        pytest.skip("PYTHONHASHSEED is set: the raw-value cache is off")
    tracker.record_pairs([("192.0.2.1", "a@example.com")] * 3)
    tracker.status()
    assert tracker._conn_cache and tracker._domain_cache  # the next sighting is a hit
    clock.now += 8
    tracker.record_pairs([("192.0.2.1", "a@example.com")])
    assert not tracker.counters[0].pending  # a hit queues nothing new
    clock.now += 8  # 16 s after the first sighting, 8 after the hit
    assert tracker.status().windows[0] == WindowCounts("10s", 10, 1, 1, 0)
    clock.now += 3
    assert tracker.status().windows[0] == WindowCounts("10s", 10, 0, 0, 0)


def test_many_values_in_one_second_are_handed_over_in_bounded_sets() -> None:
    clock = Clock()
    tracker = Tracker(windows=parse_windows("10s"), monotonic=clock)
    pairs = [(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", None) for i in range(200_000)]
    for start in range(0, len(pairs), 1000):
        tracker.record_pairs(pairs[start : start + 1000])
        assert len(tracker._touched_conn) <= 70_000
    assert tracker.status().windows[0].unique_conn_ips == 200_000


def test_last_seen_survives_the_table_growing() -> None:
    table = LastSeenTable()
    rng = np.random.default_rng(7)
    first = rng.integers(1, 2**64 - 1, size=1000, dtype=np.uint64)
    table.add_many(first)
    table.touch(first, 5)
    later = rng.integers(1, 2**64 - 1, size=50_000, dtype=np.uint64)
    table.add_many(later)  # rehashes several times
    table.touch(later, 9)
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
    counter = DistinctCounter("unique_conn_ips", max_exact=100, windowed=True)
    rng = np.random.default_rng(3)
    digests = [d.tobytes() for d in rng.integers(0, 2**64 - 1, size=2000, dtype=np.uint64)]
    counter.pending.extend(digests[:1000])
    counter.touch(digests[:1000], 4)
    counter.pending.extend(digests[1000:])  # past the bound: the flush switches
    counter.touch(digests[1000:], 7)
    assert counter.estimated
    assert counter.count_since(7) == pytest.approx(1000, rel=0.02)
    assert counter.count_since(4) == pytest.approx(2000, rel=0.02)


def test_no_windows_costs_nothing() -> None:
    tracker = Tracker(windows=())
    tracker.record_server("192.0.2.1", "a@example.com")
    assert tracker.status().windows == ()
    assert not tracker._touched_conn


# --- a real daemon --------------------------------------------------------------------

SHORT = 4  # seconds: long enough that a record and a status query fit inside it


def recorded_then_counted(daemon: Daemon, pairs: list[tuple[str, str]], name: str) -> Status:
    """Record and ask for the status at once; retry if the machine was too slow for the
    short window to promise anything (the round trip took nearly the window itself)."""

    def attempt() -> Status | None:
        started = time.monotonic()
        with daemon.connect() as conn:
            conn.record(pairs)
            status = conn.status()
        return status if time.monotonic() - started < SHORT - 1 else None

    return wait_for(attempt, 30, f"a quick enough round trip for {name}")


@pytest.mark.parametrize("max_exact", [100_000, 20], ids=["exact", "estimated"])
def test_daemon_windows_appear_repeat_and_age_out(
    make_daemon: Callable[..., Daemon], max_exact: int
) -> None:
    daemon = make_daemon(
        extra_args=["--windows", f"{SHORT}s,1h", "--max-exact-entries", str(max_exact)]
    ).start()
    pairs = [(f"192.0.2.{i}", f"a@d{i}.example") for i in range(50)]
    status = recorded_then_counted(daemon, pairs, "appearing")
    estimated = max_exact < 50
    assert ("unique_conn_ips" in status.estimated) == estimated
    tolerance = 0.02 if estimated else 0
    for name in (f"{SHORT}s", "1h"):
        counts = window(status, name)
        assert counts.unique_conn_ips == pytest.approx(50, rel=tolerance)
        assert counts.unique_domains == pytest.approx(50, rel=tolerance)
    # Ageing out, with no traffic at all: the status file follows too.
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
    assert window(status, "1h").unique_conn_ips == pytest.approx(50, rel=tolerance)
    assert status.unique_conn_ips == pytest.approx(50, rel=tolerance)
    # Repeating: values seen again count again in the short window.
    status = recorded_then_counted(daemon, pairs[:10], "repeating")
    assert window(status, f"{SHORT}s").unique_conn_ips == pytest.approx(10, rel=tolerance)
    assert status.unique_conn_ips == pytest.approx(50, rel=tolerance)
    data = json.loads((daemon.runtime_dir / "server_tracker.json").read_text())
    assert [w["window"] for w in data["windows"]] == [f"{SHORT}s", "1h"]


def test_daemon_refuses_bad_windows(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_args=["--windows", "1h,fortnight"])
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(30) == 2
    assert "--windows" in daemon.log() and "Traceback" not in daemon.log()
