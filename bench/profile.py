"""Where trackerd's CPU goes on bench.compare's workload: py-spy on the daemon.

Run: ``python -m bench.profile [--form mix] [--out profile.txt]`` (needs the bench
extra for py-spy). One trackerd run of bench.compare (8 forked workers x 200,000
records of one sender form), with ``py-spy record -f raw`` attached to the daemon
from start to end; prints the daemon's CPU per record and the samples by part of
the path a record takes (first matching part, from the receive to the counters).
py-spy samples threads that wait too (the status writer's), so shares are of the
busy samples. The raw samples go to --out for a closer look. The workers use the
library as it comes (``Client()``'s default, no value tables: `columns` messages);
``--table-entries 131072`` (BULK_TABLE_ENTRIES) profiles `interned` messages instead.

``--in-process`` instead decodes the same workload's frames (512 pairs, as the
library sends them) in this process and counts them with Tracker.record_columns()
twice, fresh strings each time: the first pass meets every distinct value once
(its first sighting: split, normalised, hashed), the second finds them all
cached. Their difference is what first sightings cost per record.
"""

from __future__ import annotations

import collections
import gc
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import compare, workload
from bench._support import arguments, table, whole_number
from servertracker.batch_encoder import DEFAULT_TABLE_ENTRIES

#: (part, the frame names that mark it), tried in order on each sample's stack.
PARTS = (
    ("waiting (threads asleep)", ("Condition.wait", "Queue.get", "WorkerThread.run")),
    ("status writer", ("status_writer",)),
    ("cache misses: connection IPs", ("Tracker._conn_misses",)),
    ("cache misses: senders", ("Tracker._sender_misses", "Tracker._record_few")),
    ("record_columns: look-ups, tallies", ("Tracker.record_columns",)),
    # The interned message's path (trackerd/core/interned.py, value_table.py).
    ("interned: definitions", ("InternedCounting.define",)),
    ("interned: references, checks", ("InternedCounting", "ValueTable")),
    ("decoding and validating", ("MessageDecoder.next_message", "decode_body")),
    ("receiving (recv, copies)", ("receive_on", "StreamServer._read", "StreamServer.receive")),
    ("epoll", ("select (selectors",)),
    ("the rest of the event loop and dispatch", ("",)),
)


def py_spy() -> str | None:
    """py-spy beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(
    form: str, out: Path, spy: str, table_entries: int = DEFAULT_TABLE_ENTRIES
) -> tuple[float, dict[str, int]]:
    """One run with py-spy on the daemon: CPU µs per record, and samples per part."""
    load = workload.Workload(form, workload.PER_WORKER)
    spies: list[subprocess.Popen[bytes]] = []

    def attach(pid: int) -> None:
        spies.append(
            subprocess.Popen(
                [
                    *(spy, "record", "-r", "200", "-f", "raw", "-o", str(out)),
                    *("--pid", str(pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(1.0)  # py-spy attaches

    run = compare.run_protocol_daemon(load, table_entries=table_entries, on_start=attach)
    for spying in spies:
        spying.wait(60)
    assert run.server_cpu is not None
    return run.server_cpu * 1e6 / load.total, samples_by_part(out)


def in_process(form: str) -> tuple[float, float, float]:
    """µs per record: decoding, record_columns() with first sightings, and with none."""
    from servertracker import protocol
    from trackerd.core.tracker import Tracker
    from trackerd.core.windows import DEFAULT_WINDOWS, parse_windows

    load = workload.Workload(form, workload.PER_WORKER)
    # The workers' frames, interleaved as the daemon receives them.
    frames = [
        protocol.encode_columns_split([ip for ip, _ in share], [s for _, s in share], 512)
        for share in load.shares
    ]
    rounds = zip(*frames, strict=True)  # every worker sends as many frames
    bodies = [bytes(frame[protocol.HEADER_SIZE :]) for batch in rounds for frame in batch]
    del load.shares, frames
    gc.collect()
    gc.freeze()  # as the daemon does after start-up
    tracker = Tracker(windows=parse_windows(DEFAULT_WINDOWS))
    seconds = []
    for _ in range(2):
        start = time.process_time()
        messages = [protocol.decode_body(body) for body in bodies]
        decoded = time.process_time()
        for message in messages:
            assert isinstance(message, protocol.RecordColumns)
            tracker.record_columns(message.conn_ips, message.senders)
        seconds.append((decoded - start, time.process_time() - decoded))
        del messages
    assert tracker.records == 2 * load.total
    per_record = 1e6 / load.total
    return seconds[0][0] * per_record, seconds[0][1] * per_record, seconds[1][1] * per_record


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
    parser = arguments("bench.profile", __doc__)
    parser.add_argument("--form", default="mix", choices=workload.FORMS, help="the sender form")
    parser.add_argument("--out", type=Path, help="keep py-spy's raw samples here")
    parser.add_argument(
        "--table-entries",
        type=whole_number(0),
        default=DEFAULT_TABLE_ENTRIES,
        help="the workers' Client(table_entries=) (default: the library's, %(default)s: "
        "columns messages; 131072 sends interned ones)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="time decoding and record_columns() alone"
    )
    args = parser.parse_args()
    if args.in_process:
        before = workload.loadavg()
        decode, first, again = in_process(args.form)
        print(f"load average before {before}, after {workload.loadavg()}")
        print(
            f"form {args.form}, µs/record: decoding {decode:.3f}; record_columns() "
            f"{first:.3f} with first sightings, {again:.3f} without: first sightings "
            f"{first - again:.3f}"
        )
        return
    spy = py_spy()
    if spy is None:
        raise SystemExit("py-spy not found: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory(prefix="stbp-") as directory:
        out = args.out or Path(directory) / "samples.txt"
        before = workload.loadavg()
        cpu, counts = profile(args.form, out, spy, args.table_entries)
        after = workload.loadavg()
    busy = sum(n for name, n in counts.items() if name != PARTS[0][0])
    print(f"load average before {before}, after {after}")
    print(f"form {args.form}: daemon CPU {cpu:.2f} µs/record, {busy} busy samples")
    rows = [[name, f"{100 * counts.get(name, 0) / busy:.1f}%"] for name, _ in PARTS[1:]]
    print(table(["part", "share of busy samples"], rows))


if __name__ == "__main__":
    main()
