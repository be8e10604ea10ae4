"""What a worker's flusher thread costs per record: `interned` against `columns`.

Run: ``python -m bench.flusher_cost [--rounds 3] [--forms domain,mix]``.

One worker's share of bench.compare's workload (200,000 records: 100,000 distinct
connection IPs, each twice; the sender forms of bench.compare), taken in batches
of 512 as the flusher takes them and encoded in this process, nothing sent: the
thread CPU time per record of each step, and the longest batch (the flusher holds
the interpreter lock that long, so a record_server() call in the worker's own
thread may wait that long). Per form, in an order rotated from round to round:

- ``columns``: protocol.encode_columns_split (what the library sends without value
  tables);
- ``interned``: BatchEncoder with a fresh 131,072-id table: the sender split
  (sender_split.sent_senders), numbering both columns (value_tables.py), and
  protocol.encode_interned; the steps are timed apart in a second pass.

Every run gets its records made anew (fresh str objects, as an SMTP worker's),
so no run finds their hash() cached by an earlier one. Medians over the rounds;
the load average before and after. The daemon's side is
bench.interned_cost's; end to end, bench.compare's.
"""

from __future__ import annotations

import statistics
import time

from bench._support import arguments, table, whole_number
from bench.workload import FORMS, PER_WORKER, conn_ip, loadavg, sender
from servertracker import protocol
from servertracker.batch_encoder import BULK_TABLE_ENTRIES, INTERNED_BATCH_SIZE, BatchEncoder
from servertracker.sender_split import sent_senders
from servertracker.value_tables import ValueTables

BATCH = 512


def batches(form: str, records: int) -> list[tuple[list[str | None], list[str | None]]]:
    """One worker's records (the first worker's of bench.compare), in batches."""
    pairs = [(conn_ip(r), sender(form, r)) for r in range(records)]
    return [
        ([ip for ip, _ in pairs[i : i + BATCH]], [s for _, s in pairs[i : i + BATCH]])
        for i in range(0, records, BATCH)
    ]


def whole(kind: str, work: list[tuple[list[str | None], list[str | None]]]) -> tuple[float, float]:
    """ns of thread CPU per record, and the longest batch in µs, for one encoder."""
    encoder = BatchEncoder(kind, BULK_TABLE_ENTRIES if kind == "interned" else 0)
    clock = time.thread_time_ns
    longest = total = 0
    for conn_ips, senders in work:
        start = clock()
        encoder.encode(conn_ips, senders, BATCH)
        spent = clock() - start
        total += spent
        longest = max(longest, spent)
    records = sum(len(senders) for _, senders in work)
    return total / records, longest / 1000


def steps(work: list[tuple[list[str | None], list[str | None]]]) -> dict[str, float]:
    """ns of thread CPU per record of each step of an interned batch."""
    tables = ValueTables(BULK_TABLE_ENTRIES)
    clock = time.thread_time_ns
    spent = dict.fromkeys(("split", "number IPs", "number senders", "encode"), 0)
    for conn_ips, senders in work:
        t0 = clock()
        parts = sent_senders(senders)
        t1 = clock()
        ips = tables.conn_ips.number(conn_ips)
        t2 = clock()
        sends = tables.senders.number(parts)
        t3 = clock()
        protocol.encode_interned(
            ips.first_id(), ips.texts, ips.refs,
            sends.first_id(), sends.texts, sends.refs,
        )  # fmt: skip
        t4 = clock()
        for name, took in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[name] += took
    records = sum(len(senders) for _, senders in work)
    return {name: took / records for name, took in spent.items()}


def main() -> None:
    global BATCH  # one knob for the whole run
    parser = arguments("bench.flusher_cost", __doc__)
    parser.add_argument(
        "--rounds", type=whole_number(), default=3, help="rounds, encoders alternated"
    )
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated sender forms")
    parser.add_argument(
        "--records", type=whole_number(), default=PER_WORKER, help="records of the worker"
    )
    parser.add_argument(
        "--batch",
        type=whole_number(),
        default=BATCH,
        help=f"records a batch (the library's: {BATCH}, {INTERNED_BATCH_SIZE} for interned)",
    )
    args = parser.parse_args()
    BATCH = args.batch
    before = loadavg()
    rows = []
    for form in args.forms.split(","):
        runs: dict[str, list[tuple[float, float]]] = {"columns": [], "interned": []}
        step_runs: list[dict[str, float]] = []
        for round_ in range(args.rounds):
            order = ["columns", "interned"][:: 1 if round_ % 2 == 0 else -1]
            for kind in order:
                runs[kind].append(whole(kind, batches(form, args.records)))
            step_runs.append(steps(batches(form, args.records)))
        for kind, results in runs.items():
            per_record = statistics.median(r[0] for r in results)
            detail = ""
            if kind == "interned":
                detail = ", ".join(
                    f"{name} {statistics.median(s[name] for s in step_runs):.0f}"
                    for name in step_runs[0]
                )
            rows.append(
                [form, kind, f"{per_record:.0f}", f"{max(r[1] for r in results):.0f}", detail]
            )
    print(f"load average before {before}, after {loadavg()}")
    headers = ["form", "encoder", "ns/record", "longest batch µs", "steps, ns/record"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
