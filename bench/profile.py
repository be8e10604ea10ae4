"""Where trackerd's CPU goes on bench.compare's workload: py-spy on the daemon.

Run: ``python -m bench.profile [--form mix] [--out profile.txt]`` (needs the bench
extra for py-spy). One trackerd run of bench.compare (8 forked workers x 200,000
records of one sender form), with ``py-spy record -f raw`` attached to the daemon
from start to end; prints the daemon's CPU per record and the samples by part of
the path a record takes (first matching part, from the receive to the counters).
py-spy samples threads that wait too (the status writer's), so shares are of the
busy samples. The raw samples go to --out for a closer look.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import compare
from bench._support import BenchDaemon, table

#: (part, the frame names that mark it), tried in order on each sample's stack.
PARTS = (
    ("waiting (threads asleep)", ("Condition.wait", "Queue.get", "WorkerThread.run")),
    ("status writer", ("status_writer",)),
    ("cache misses: connection IPs", ("Tracker._conn_misses",)),
    ("cache misses: senders", ("Tracker._sender_misses", "Tracker._record_few")),
    ("record_columns: look-ups, tallies", ("Tracker.record_columns",)),
    ("decoding and validating", ("MessageDecoder.next_message", "decode_body")),
    ("receiving (recv, copies)", ("receive_on", "StreamServer._read", "StreamServer.receive")),
    ("epoll", ("select (selectors",)),
    ("the rest of the event loop and dispatch", ("",)),
)


def py_spy() -> str | None:
    """py-spy beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(form: str, out: Path, spy: str) -> tuple[float, dict[str, int]]:
    """One run with py-spy on the daemon: CPU µs per record, and samples per part."""
    load = compare.Workload(form, compare.PER_WORKER)
    spies: list[subprocess.Popen[bytes]] = []

    def start() -> BenchDaemon:
        daemon = BenchDaemon().start()
        assert daemon.process is not None
        spies.append(
            subprocess.Popen(
                [
                    *(spy, "record", "-r", "200", "-f", "raw", "-o", str(out)),
                    *("--pid", str(daemon.process.pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(1.0)  # py-spy attaches
        return daemon

    run = compare.run_protocol_daemon(load, start)
    for spy in spies:
        spy.wait(60)
    assert run.server_cpu is not None
    return run.server_cpu * 1e6 / load.total, samples_by_part(out)


def samples_by_part(raw: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        for name, marks in PARTS:
            if any(mark in stack for mark in marks):
                counts[name] += int(number)
                break
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description="py-spy on trackerd under bench.compare's load")
    parser.add_argument("--form", default="mix", choices=compare.FORMS)
    parser.add_argument("--out", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args()
    spy = py_spy()
    if spy is None:
        raise SystemExit("py-spy not found: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory(prefix="stbp-") as directory:
        out = args.out or Path(directory) / "samples.txt"
        before = compare.loadavg()
        cpu, counts = profile(args.form, out, spy)
        after = compare.loadavg()
    busy = sum(n for name, n in counts.items() if name != PARTS[0][0])
    print(f"load average before {before}, after {after}")
    print(f"form {args.form}: daemon CPU {cpu:.2f} µs/record, {busy} busy samples")
    rows = [[name, f"{100 * counts.get(name, 0) / busy:.1f}%"] for name, _ in PARTS[1:]]
    print(table(["part", "share of busy samples"], rows))


if __name__ == "__main__":
    main()
