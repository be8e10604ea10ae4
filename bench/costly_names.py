"""The costliest names (issue 12 §1): the worst cost of one value, and ping latency
on a second connection while one connection floods 1 MiB frames of them.

Run: ``python -m bench.costly_names [--seconds S] [--variants N]``.

Part 1 times ``classify_sender`` on distinct values of every shape in
fuzz/hostile_names.py, beside what the same values cost through idna.encode
(the path trackerd took before). A value's cost is the least of three runs
(the machine is shared: one run can be preempted); a shape's row gives the
median and the worst over its values. Target: no value over 200 us.

Part 2 starts trackerd, floods one connection with 1 MiB frames of distinct
costly senders for S seconds, and pings on a second connection the whole time.
Target: ping max <= 100 ms.
"""

from __future__ import annotations

import multiprocessing
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import idna

from bench._support import BenchDaemon, arguments, real_number, summary, table, whole_number
from fuzz.hostile_names import LEGITIMATE, SHAPES, flood_pairs, variant
from servertracker import protocol
from servertracker.connection import DaemonConnection
from trackerd.core.normalise import classify_sender

TARGET_VALUE_US = 200
TARGET_PING_MS = 100
PAIRS_PER_FRAME = 2000
#: More than the daemon gets through in the flood's seconds (a few thousand pairs a
#: second): distinct values throughout, so no cache hit makes the flood cheap.
FLOOD_FRAMES = 64


def _cost_us(function: Callable[[str], object], value: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        function(value)
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def _idna_encode(value: str) -> object:
    try:
        return idna.encode(value, uts46=True)
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def value_costs(variants: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for shape in SHAPES:
        ours = [_cost_us(classify_sender, "u@" + variant(shape, i)) for i in range(variants)]
        # idna takes milliseconds on some shapes: fewer values, one run each.
        theirs = [_cost_us(_idna_encode, variant(shape, i), 1) for i in range(min(variants, 5))]
        counted = isinstance(classify_sender("u@" + variant(shape, 0)), tuple)
        rows.append(
            {
                "shape": shape,
                "median_us": statistics.median(ours),
                "max_us": max(ours),
                "idna_median_us": statistics.median(theirs),
                "counted": counted,
                "legitimate": shape in LEGITIMATE,
            }
        )
    return rows


def _flood(socket_path: str, ready: Any, stop: Any) -> None:
    """In a child process, so that building frames does not take this one's GIL or
    CPU while pings are timed: every frame is built before the flood starts."""
    frames = [
        protocol.encode(protocol.Record(flood_pairs(number, PAIRS_PER_FRAME)))
        for number in range(FLOOD_FRAMES)
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        ready.set()
        for frame in frames:
            if stop.is_set():
                break
            sock.sendall(frame)


def ping_under_flood(seconds: float) -> dict[str, float]:
    daemon = BenchDaemon().start()
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    flooder = multiprocessing.Process(target=_flood, args=(str(daemon.socket_path), ready, stop))
    latencies: list[float] = []
    try:
        flooder.start()
        ready.wait(300)
        with DaemonConnection(daemon.socket_path, timeout=60) as conn:
            while conn.status().records == 0:
                time.sleep(0.01)
            first = conn.status().records
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                start = time.perf_counter()
                conn.ping()
                latencies.append((time.perf_counter() - start) * 1000)
                time.sleep(0.005)  # a ping every 5 ms: the pinger needs little CPU itself
            records = conn.status().records - first
            assert first + records < FLOOD_FRAMES * PAIRS_PER_FRAME, "the flood ran out"
    finally:
        stop.set()
        flooder.join(60)
        daemon.stop()
    result = summary(latencies)
    result["pings"] = len(latencies)
    result["records_per_second"] = records / seconds
    return result


def report(rows: list[dict[str, object]], ping: dict[str, float] | None) -> str:
    lines = [
        table(
            ["shape (us per value)", "median", "max", "idna.encode", "ratio", "counts"],
            [
                [
                    str(row["shape"]),
                    f"{row['median_us']:.1f}",
                    f"{row['max_us']:.1f}",
                    f"{row['idna_median_us']:.1f}",
                    f"{float(row['idna_median_us']) / float(row['median_us']):.1f}x",  # type: ignore[arg-type]
                    "yes" if row["counted"] else "rejected",
                ]
                for row in rows
            ],
        )
    ]
    worst = max(float(row["max_us"]) for row in rows)  # type: ignore[arg-type]
    verdict = "met" if worst <= TARGET_VALUE_US else "MISSED"
    lines.append(f"worst value: {worst:.1f} us (target {TARGET_VALUE_US} us: {verdict})")
    if ping is not None:
        lines.append("")
        lines.append(
            table(
                ["ping under a costly flood, ms", "pings", "median", "p99", "max"],
                [
                    [
                        f"{ping['records_per_second']:.0f} costly pairs/s",
                        f"{ping['pings']:.0f}",
                        f"{ping['median']:.2f}",
                        f"{ping['p99']:.2f}",
                        f"{ping['max']:.2f}",
                    ]
                ],
            )
        )
        verdict = "met" if ping["max"] <= TARGET_PING_MS else "MISSED"
        lines.append(f"ping max {ping['max']:.1f} ms (target {TARGET_PING_MS} ms: {verdict})")
    return "\n".join(lines)


def main() -> None:
    parser = arguments("bench.costly_names", __doc__)
    parser.add_argument("--variants", type=whole_number(), default=30, help="values per shape")
    parser.add_argument(
        "--seconds", type=real_number(), default=5.0, help="flood length; 0 to skip"
    )
    args = parser.parse_args()
    rows = value_costs(args.variants)
    ping = ping_under_flood(args.seconds) if args.seconds > 0 else None
    print(report(rows, ping))


if __name__ == "__main__":
    main()
