"""The daemon's CPU per record: `interned` messages against `columns`, side by side.

Run: ``python -m bench.interned_cost [--rounds 3] [--forms domain,mix]``.

bench.compare's workload (8 forked workers x 200,000 records, 100,000 distinct
connection IPs, each sender form), but the workers send frames encoded before any
timing, on raw sockets: what is measured is the daemon alone (utime + stime from
/proc/PID/stat, divided by the records), not a client library. Per form, three
competitors, in an order rotated from round to round:

- ``columns raw``: `columns` messages of 512 pairs (the library's columns batch,
  servertracker.recorder.DEFAULT_BATCH_SIZE) with the senders as given (what
  the client library sent before `interned`);
- ``columns split``: the same with each sender as a worker now sends it
  (servertracker.sender_split.sent_senders: the domain part of the usual forms);
- ``interned``: the split senders, numbered per worker (a dict value -> id, as a
  worker's table: only a worker's first use of a value carries its text), in
  `interned` messages of 2,048 pairs (the library's interned batch,
  servertracker.batch_encoder.INTERNED_BATCH_SIZE), after an `intern` request for
  131,072 entries. ``--batch N`` sends N pairs a message in all three.

``--baseline DIR`` adds a fourth, ``interned, baseline``: the same interned frames
against trackerd from DIR (say ``git archive`` of main before a change), in the
same rotation, so a change's effect on the daemon's CPU is read in one run;
``--only interned`` leaves the columns competitors out. ``--pure-python`` adds each
competitor again against this tree's daemon with the pure-Python fallback forced.

Each daemon is a fresh trackerd with its defaults (windows 1h,24h); every run
checks the records and the distinct counts. The workers' CPU (os.wait4: sending
the frames only) is printed too, and "daemon + sending CPU" is the two summed
(pre-encoded frames: no client library's encoding in it). Medians and ratios are
printed, with the load average before and after.
"""

from __future__ import annotations

import collections
import os
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._support import BenchDaemon, arguments, table, whole_number
from bench.profile import py_spy
from bench.trees import baseline_tree, this_tree
from bench.workload import (
    FORMS,
    PER_WORKER,
    WORKERS,
    Workload,
    cpu_seconds,
    fork_workers,
    loadavg,
)
from servertracker import protocol
from servertracker.batch_encoder import INTERNED_BATCH_SIZE
from servertracker.recorder import DEFAULT_BATCH_SIZE
from servertracker.sender_split import sent_senders

#: The library's batches: columns (and record) messages, and interned ones.
BATCH = DEFAULT_BATCH_SIZE
INTERNED_BATCH = INTERNED_BATCH_SIZE
TABLE_ENTRIES = 131_072
NIL = protocol.INTERNED_NIL


def columns_frames(
    pairs: Sequence[tuple[str, str]], split: bool, batch: int = BATCH
) -> list[bytes]:
    frames = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        senders: list[str | None] = [s for _, s in chunk]
        if split:
            senders = sent_senders(senders)
        frames.append(protocol.encode_columns([ip for ip, _ in chunk], senders))
    return frames


class _Numbering:
    """One worker's two tables: value -> id; full, it starts again from id 0."""

    def __init__(self) -> None:
        self.ids: list[dict[str, int]] = [{}, {}]

    def encode(self, chunk: Sequence[tuple[str | None, str | None]]) -> bytes:
        parts: list[object] = []
        for column in (0, 1):
            table = self.ids[column]
            if len(table) + len(chunk) > TABLE_ENTRIES:
                table.clear()  # every id of this message is then defined anew
            first, new, ids = len(table), [], []
            for pair in chunk:
                value = pair[column]
                if value is None:
                    ids.append(NIL)
                    continue
                found = table.get(value)
                if found is None:
                    found = table[value] = len(table)
                    new.append(value)
                ids.append(found)
            parts += [first, new, struct.pack(f"<{len(ids)}I", *ids)]
        return protocol.encode_interned(*parts)  # type: ignore[arg-type]


def interned_frames(pairs: Sequence[tuple[str, str]], batch: int = INTERNED_BATCH) -> list[bytes]:
    numbering = _Numbering()
    frames = [protocol.encode(protocol.InternRequest(TABLE_ENTRIES))]
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        senders = sent_senders([s for _, s in chunk])
        frames.append(numbering.encode(list(zip([ip for ip, _ in chunk], senders, strict=True))))
    return frames


def run(
    frames: list[list[bytes]],
    load: Workload,
    interned: bool,
    profile: Path | None = None,
    command: list[str] | None = None,
) -> tuple[float, float, float]:
    """(seconds, daemon CPU seconds, workers' CPU seconds) for every worker sending
    its frames; with profile, py-spy's raw samples of the daemon go there. command
    starts another trackerd (a baseline tree's, bench.trees), else this tree's."""
    daemon = BenchDaemon(command=command).start()
    spy = None
    try:
        assert daemon.process is not None
        if profile is not None:
            spy = subprocess.Popen(
                [py_spy() or "py-spy", "record", "-f", "raw", "-r", "250", "-o", str(profile),
                 "-p", str(daemon.process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)  # attached
        cpu_before = cpu_seconds(daemon.process.pid)
        start = time.perf_counter()

        def work(w: int) -> bool:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(daemon.socket_path))
            decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)

            def reply() -> protocol.Message:
                while (message := decoder.next_message()) is protocol.NEED_DATA:
                    decoder.receive_data(sock.recv(65536))
                assert not isinstance(message, protocol._Sentinel)  # not CLOSED
                return message

            mine = frames[w]
            if interned:
                sock.sendall(mine[0])
                granted = reply()
                assert granted == protocol.InternReply(TABLE_ENTRIES), granted
                mine = mine[1:]
            for frame in mine:
                sock.sendall(frame)
            sock.sendall(protocol.encode(protocol.Ping()))
            ok = reply() == protocol.Pong()
            sock.close()
            return ok

        worker_cpu = fork_workers(work)
        status = daemon.status()
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(daemon.process.pid) - cpu_before
        assert status.records == load.total, status
        got = (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers)
        assert got == load.distinct, f"counted {got}, expected {load.distinct}"
        if interned:
            assert status.health is not None and status.health.interned_messages > 0
        return elapsed, cpu, worker_cpu
    finally:
        daemon.stop()
        if spy is not None:
            spy.wait(30)


BASELINE = "interned, baseline"
#: A row's suffix with --pure-python: this tree's daemon with the fallback forced.
PURE = ", pure Python"


def top_functions(path: Path, count: int = 15) -> list[tuple[str, float]]:
    """The leaf frames of py-spy's raw samples, busiest first, as shares of the busy
    samples (threads asleep left out)."""
    own: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or "Condition.wait" in stack or "WorkerThread.run" in stack:
            continue
        own[stack.split(";")[-1]] += int(samples)
    busy = sum(own.values()) or 1
    return [(function, n / busy) for function, n in own.most_common(count)]


def main() -> None:
    parser = arguments("bench.interned_cost", __doc__)
    parser.add_argument(
        "--rounds", type=whole_number(), default=3, help="rounds of every competitor"
    )
    parser.add_argument("--forms", default="domain,mix", help=f"comma-separated, of {FORMS}")
    parser.add_argument(
        "--per-worker", type=whole_number(), default=PER_WORKER, help="records per worker"
    )
    parser.add_argument(
        "--batch",
        type=whole_number(),
        help=f"pairs per message in all (default: the library's, {BATCH:,} for columns, "
        f"{INTERNED_BATCH:,} for interned)",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the daemon of one more run of each, samples here"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help=f"also run {BASELINE!r}: the interned frames against trackerd from DIR (a "
        "checkout, e.g. git archive of main before a change), alternated with this tree's",
    )
    parser.add_argument(
        "--pure-python",
        action="store_true",
        help="also run each competitor against this tree's daemon with the pure-Python "
        "fallback forced (SERVERTRACKER_PURE_PYTHON=1): what its C path buys",
    )
    parser.add_argument("--only", help="run only competitors whose name contains this")
    args = parser.parse_args()
    columns_batch = args.batch or BATCH
    interned_batch = args.batch or INTERNED_BATCH
    print("load before:", loadavg())
    rows = []
    for form in args.forms.split(","):
        load = Workload(form, args.per_worker)
        makers: dict[str, Callable[[list[tuple[str, str]]], list[bytes]]] = {
            "columns raw": lambda share: columns_frames(share, False, columns_batch),
            "columns split": lambda share: columns_frames(share, True, columns_batch),
            "interned": lambda share: interned_frames(share, interned_batch),
        }
        if args.only:
            makers = {n: m for n, m in makers.items() if args.only in n}
        frames = {name: [make(share) for share in load.shares] for name, make in makers.items()}
        # This tree's daemon on its default path (C where built), whatever the
        # environment says (bench.trees).
        commands: dict[str, list[str] | None] = dict.fromkeys(
            frames, this_tree().trackerd_command()
        )
        if args.pure_python:
            for name in list(frames):
                frames[f"{name}{PURE}"] = frames[name]
                commands[f"{name}{PURE}"] = this_tree(pure=True).trackerd_command()
        if args.baseline is not None:
            if "interned" not in frames:
                frames["interned"] = [
                    interned_frames(share, interned_batch) for share in load.shares
                ]
            frames[BASELINE] = frames["interned"]
            commands[BASELINE] = baseline_tree(args.baseline).trackerd_command()
        if args.only:
            frames = {n: f for n, f in frames.items() if args.only in n}
        sizes = {name: sum(len(b) for f in each for b in f) // WORKERS
                 for name, each in frames.items()}  # fmt: skip
        cpu: dict[str, list[float]] = {name: [] for name in frames}
        wall: dict[str, list[float]] = {name: [] for name in frames}
        workers: dict[str, list[float]] = {name: [] for name in frames}
        names = list(frames)
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                seconds, used, worker_cpu = run(
                    frames[name], load, name.startswith("interned"), None, commands.get(name)
                )
                cpu[name].append(used)
                wall[name].append(seconds)
                workers[name].append(worker_cpu)
        if args.profile is not None:
            for name in names:
                path = args.profile.with_suffix(f".{form}.{name.replace(' ', '-')}.txt")
                run(frames[name], load, name.startswith("interned"), path, commands.get(name))
                print(f"{form} {name}: top own time of py-spy's samples ({path})")
                for function, share in top_functions(path):
                    print(f"  {share:5.1%}  {function}")
        base = statistics.median(cpu["columns raw"]) if "columns raw" in cpu else None
        for name in names:
            median = statistics.median(cpu[name])
            both = statistics.median(a + b for a, b in zip(cpu[name], workers[name], strict=True))
            rows.append(
                [
                    form,
                    name,
                    f"{median * 1e6 / load.total:.3f}",
                    "-" if base is None else f"{median / base:.2f}",
                    f"{load.total / statistics.median(wall[name]) / 1000:.0f}k",
                    f"{sizes[name] / 1e6:.1f}",
                    f"{statistics.median(workers[name]) * 1e6 / load.total:.3f}",
                    f"{both * 1e6 / load.total:.3f}",
                ]
            )
    headers = ["form", "sent as", "daemon CPU µs/record", "vs columns raw", "records/s",
               "MB sent per worker", "workers CPU µs/record (sending)",
               "daemon + sending CPU µs/record"]  # fmt: skip
    print(table(headers, rows))
    print("load after:", loadavg())
    print(f"({WORKERS} workers x {args.per_worker} records, {args.rounds} rounds, medians)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "random")
    main()
