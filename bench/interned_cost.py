"""The daemon's CPU per record: `interned` messages against `columns`, side by side.

Run: ``python -m bench.interned_cost [--rounds 3] [--forms domain,mix]``.

bench.compare's workload (8 forked workers x 200,000 records, 100,000 distinct
connection IPs, each sender form), but the workers send frames encoded before any
timing, on raw sockets: what is measured is the daemon alone (utime + stime from
/proc/PID/stat, divided by the records), not a client library. Per form, three
competitors, in an order rotated from round to round:

- ``columns raw``: `columns` messages of 512 pairs with the senders as given (what
  the client library sent before `interned`);
- ``columns split``: the same with each sender as a worker now sends it
  (servertracker.sender_split.sent_senders: the domain part of the usual forms);
- ``interned``: the split senders, numbered per worker (a dict value -> id, as a
  worker's table: only a worker's first use of a value carries its text), in
  `interned` messages of 512 pairs, after an `intern` request for 131,072 entries.

Each daemon is a fresh trackerd with its defaults (windows 1h,24h). Medians and
ratios are printed, with the load average before and after.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import time
from collections.abc import Callable, Sequence

from bench._support import BenchDaemon, arguments, table
from bench.compare import (
    FORMS,
    PER_WORKER,
    WORKERS,
    Workload,
    cpu_seconds,
    fork_workers,
    loadavg,
)
from servertracker import protocol
from servertracker.sender_split import sent_senders

BATCH = 512
TABLE_ENTRIES = 131_072
NIL = protocol.INTERNED_NIL


def columns_frames(pairs: Sequence[tuple[str, str]], split: bool) -> list[bytes]:
    frames = []
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start : start + BATCH]
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


def interned_frames(pairs: Sequence[tuple[str, str]]) -> list[bytes]:
    numbering = _Numbering()
    frames = [protocol.encode(protocol.InternRequest(TABLE_ENTRIES))]
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start : start + BATCH]
        senders = sent_senders([s for _, s in chunk])
        frames.append(numbering.encode(list(zip([ip for ip, _ in chunk], senders, strict=True))))
    return frames


def run(frames: list[list[bytes]], total: int, interned: bool) -> tuple[float, float]:
    """(seconds, daemon CPU seconds) for every worker sending its frames."""
    daemon = BenchDaemon().start()
    try:
        assert daemon.process is not None
        cpu_before = cpu_seconds(daemon.process.pid)
        start = time.perf_counter()

        def work(w: int) -> bool:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(daemon.socket_path))
            decoder = protocol.MessageDecoder(sent_by=protocol.Peer.DAEMON)

            def reply() -> protocol.Message:
                while (message := decoder.next_message()) is protocol.NEED_DATA:
                    decoder.receive_data(sock.recv(65536))
                assert not isinstance(message, type(protocol.CLOSED))
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

        fork_workers(work)
        status = daemon.status()
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(daemon.process.pid) - cpu_before
        assert status.records == total, status
        if interned:
            assert status.health is not None and status.health.interned_messages > 0
        return elapsed, cpu
    finally:
        daemon.stop()


def main() -> None:
    parser = arguments("bench.interned_cost", __doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every competitor")
    parser.add_argument("--forms", default="domain,mix", help=f"comma-separated, of {FORMS}")
    parser.add_argument("--per-worker", type=int, default=PER_WORKER, help="records per worker")
    args = parser.parse_args()
    print("load before:", loadavg())
    rows = []
    for form in args.forms.split(","):
        load = Workload(form, args.per_worker)
        makers: dict[str, Callable[[list[tuple[str, str]]], list[bytes]]] = {
            "columns raw": lambda share: columns_frames(share, split=False),
            "columns split": lambda share: columns_frames(share, split=True),
            "interned": interned_frames,
        }
        frames = {name: [make(share) for share in load.shares] for name, make in makers.items()}
        sizes = {name: sum(map(len, f)) // WORKERS for name, f in frames.items()}
        cpu: dict[str, list[float]] = {name: [] for name in makers}
        wall: dict[str, list[float]] = {name: [] for name in makers}
        names = list(makers)
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                seconds, used = run(frames[name], load.total, name == "interned")
                cpu[name].append(used)
                wall[name].append(seconds)
        base = statistics.median(cpu["columns raw"])
        for name in names:
            median = statistics.median(cpu[name])
            rows.append(
                [
                    form,
                    name,
                    f"{median * 1e6 / load.total:.3f}",
                    f"{median / base:.2f}",
                    f"{load.total / statistics.median(wall[name]) / 1000:.0f}k",
                    f"{sizes[name] / 1e6:.1f}",
                ]
            )
    headers = ["form", "sent as", "daemon CPU µs/record", "vs columns raw", "records/s",
               "MB sent per worker"]  # fmt: skip
    print(table(headers, rows))
    print("load after:", loadavg())
    print(f"({WORKERS} workers x {args.per_worker} records, {args.rounds} rounds, medians)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "random")
    main()
