"""Memory per distinct value: the exact table, the estimate, and a whole daemon.

Run: ``python -m bench.memory [--daemon]``, or
``python -m bench.memory --categories [--totals 1000000,10000000] [--category domains]
[--bound default|exact|both]``.

- exact mode: bytes of the digest table per entry at 1 and 10 million entries;
- estimate mode: memory and relative error of the HyperLogLog sketch at 10 and
  100 million distinct values (random 64-bit digests, as keyed BLAKE2b yields);
- with --daemon: the RSS growth of a real trackerd per distinct connection IP
  recorded over the socket, at 1 and 10 million (takes a few minutes);
- with --categories: the same for each category (connection IPs, domains, IP
  literals), one daemon per category and bound: with the default
  --max-exact-entries (2.9 million: past it the category is an estimate, so a
  figure past it is the sketch's) and with it raised so that every entry stays
  exact (a few minutes per category and bound at 10 million).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench._support import BenchDaemon, arguments, table
from bench.workload import loadavg
from servertracker.connection import DaemonConnection
from trackerd.core.digest_table import DigestTable
from trackerd.core.hyperloglog import HyperLogLog

CHUNK = 1 << 20


def _random_chunks(total: int) -> list[int]:
    return [min(CHUNK, total - start) for start in range(0, total, CHUNK)]


def exact_bytes_per_entry(total: int, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    digests = DigestTable()
    for size in _random_chunks(total):
        digests.add_many(rng.integers(1, 2**64 - 1, size=size, dtype=np.uint64))
    return digests.nbytes / len(digests)


def estimate_error(total: int, seed: int = 2) -> tuple[int, float]:
    rng = np.random.default_rng(seed)
    sketch = HyperLogLog()
    for size in _random_chunks(total):
        sketch.add_many(rng.integers(0, 2**64, size=size, dtype=np.uint64, endpoint=False))
    return sketch.nbytes, (sketch.estimate() - total) / total


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pairs(category: str, start: int, n: int) -> list[tuple[str | None, str | None]]:
    """n distinct values of one category, from the start-th on."""
    if category == "domains":
        return [(None, f"mail{i}.example.com") for i in range(start, start + n)]
    # 2001:db8::H:L, distinct for each i below 2**32 (ipaddress is 10 times slower).
    values = [f"2001:db8::{i >> 16:x}:{i & 0xFFFF:x}" for i in range(start, start + n)]
    if category == "ip-servers":
        return [(None, f"[IPv6:{v}]") for v in values]
    return [(v, None) for v in values]


STATUS_FIELD = {
    "conn-ips": "unique_conn_ips",
    "domains": "unique_domains",
    "ip-servers": "unique_ip_servers",
}


def daemon_bytes_per_entry(
    totals: tuple[int, ...], category: str = "conn-ips", default_bound: bool = False
) -> dict[int, tuple[float, float]]:
    """RSS growth of trackerd per distinct value of one category, at each total, as
    a user reads it: (RSS now - RSS at start) / entries; and the RSS in MiB. With
    default_bound the daemon keeps its default --max-exact-entries (past it, the category is an
    estimate); otherwise the bound is raised so that every entry stays exact."""
    extra = [] if default_bound else ["--max-exact-entries", str(max(totals) + 1)]
    daemon = BenchDaemon(extra_args=extra).start()
    results = {}
    try:
        assert daemon.process is not None
        base = _rss_kib(daemon.process.pid)
        sent = 0
        with DaemonConnection(daemon.socket_path, timeout=600) as conn:
            for total in sorted(totals):
                while sent < total:
                    n = min(65536, total - sent)
                    conn.record(_pairs(category, sent, n))
                    sent += n
                counted = getattr(conn.status(), STATUS_FIELD[category])
                assert default_bound or counted == total, (counted, total)
                rss = _rss_kib(daemon.process.pid)
                results[total] = ((rss - base) * 1024 / total, rss / 1024)
    finally:
        daemon.stop()
    return results


def run(with_daemon: bool) -> list[list[str]]:
    rows = [[f"exact table, {n:,} entries", f"{exact_bytes_per_entry(n):.1f} bytes/entry", ""]
            for n in (1_000_000, 10_000_000)]  # fmt: skip
    for n in (10_000_000, 100_000_000):
        nbytes, error = estimate_error(n)
        rows.append(
            [f"estimate, {n:,} distinct", f"{nbytes:,} bytes", f"error {error * 100:+.3f}%"]
        )
    if with_daemon:
        growth = {n: per_entry for n, (per_entry, _) in
                  daemon_bytes_per_entry((1_000_000, 10_000_000)).items()}  # fmt: skip
        for n, per_entry in growth.items():
            rows.append(
                [f"trackerd RSS growth, {n:,} conn IPs", f"{per_entry:.1f} bytes/entry", ""]
            )
        # The raw-value caches are a fixed ~25 MiB, full long before a million entries:
        # the growth from 1 to 10 million is the cost of one more entry.
        marginal = (growth[10_000_000] * 10_000_000 - growth[1_000_000] * 1_000_000) / 9_000_000
        rows.append(["trackerd RSS, 1M -> 10M (marginal)", f"{marginal:.1f} bytes/entry", ""])
    return rows


def report(rows: list[list[str]]) -> str:
    return table(["memory", "size", "accuracy"], rows)


CATEGORY_NAMES = {"conn-ips": "connection IPs", "domains": "domains", "ip-servers": "IP literals"}


def per_category(
    totals: tuple[int, ...], categories: tuple[str, ...], bounds: tuple[str, ...]
) -> list[list[str]]:
    """RSS growth per entry at each total, for each category, one daemon per run.

    bounds: "default" keeps --max-exact-entries at its default (past 2.9 million
    the category is an estimate, so the figure past it is the sketch's);
    "exact" raises it past the largest total, so every entry stays exact.
    """
    rows = []
    for category in categories:
        for bound in bounds:
            start = time.monotonic()
            growth = daemon_bytes_per_entry(totals, category, bound == "default")
            note = "default bound (estimate past 2.9M)" if bound == "default" else "all exact"
            for n, (per_entry, rss_mib) in growth.items():
                rows.append([f"{CATEGORY_NAMES[category]}, {n:,}", f"{per_entry:.1f} B/entry",
                             f"RSS {rss_mib:,.0f} MiB", note])  # fmt: skip
                print("  ".join(rows[-1]), flush=True)
            print(f"  ({time.monotonic() - start:.0f} s)", flush=True)
    return rows


def main() -> None:
    parser = arguments("bench.memory", __doc__)
    parser.add_argument("--daemon", action="store_true", help="also measure a real daemon")
    parser.add_argument(
        "--categories",
        action="store_true",
        help="only the daemon's RSS growth at 1M and 10M, for each category",
    )
    parser.add_argument(
        "--bound",
        choices=("default", "exact", "both"),
        default="both",
        help="with --categories: keep the default --max-exact-entries (past it, an "
        "estimate), raise it so that every entry stays exact, or both",
    )
    parser.add_argument("--category", choices=tuple(STATUS_FIELD), action="append",
                        help="with --categories: only this one (repeatable)")  # fmt: skip
    parser.add_argument("--totals", default="1000000,10000000",
                        help="with --categories: entries at which to measure")  # fmt: skip
    args = parser.parse_args()
    if args.categories:
        totals = tuple(int(n) for n in args.totals.split(","))
        bounds = ("default", "exact") if args.bound == "both" else (args.bound,)
        print(f"load average before: {loadavg()}", flush=True)
        rows = per_category(totals, tuple(args.category or STATUS_FIELD), bounds)
        print(table(["category, entries", "RSS growth", "RSS", "bound"], rows))
        print(f"load average after: {loadavg()}")
    else:
        print(report(run(args.daemon)))


if __name__ == "__main__":
    main()
