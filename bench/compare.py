"""trackerd against what operators would use instead, on every sender form, side by side.

Run: ``python -m bench.compare [--rounds 3]`` (needs Debian's redis-server and the
bench extra: ``apt-get install redis-server; pip install -e '.[bench]'``);
``--baseline DIR`` adds another checkout's trackerd, ``--forms`` and
``--competitors`` run a slice (``--competitors all`` runs every competitor).

8 forked workers record 200,000 (connection IP, sender) pairs each: 1.6 million
records with 100,000 distinct connection IPs, once per sender form:

- ``domain``: the domain part alone, as the original's ``RecordServer(connIP,
  senderDomain)`` takes it, with ``[ip]`` literals for one record in ten;
- ``user@domain`` and ``<user@domain>``: the whole MAIL FROM, literals alike;
- ``[ip]``: IP literals only;
- ``mix``: all of those, plus the null sender ``<>`` and mixed case.

Each competitor is timed from the first fork until its counts confirm every
record. CPU is divided by the records three ways: the server's (utime + stime
from /proc/PID/stat), the workers' (ru_utime + ru_stime from os.wait4, flusher
threads included), and their total. The workers' strings are made fresh, apart
from the ones the true counts are taken from, so no hash() is cached before
timing (as an SMTP worker's values are new objects). The forms run one after the
other; within a form, every round runs every competitor, and the order of
competitors rotates from round to round, so a load that comes and goes on this
shared machine falls on each alike. Medians and ratios are printed, as a table
and as markdown, and written to bench/results/compare.json and compare.md, with
the load average before and after.

Which code runs (``tree, path``): the workers are forked from a bench process
started per tree and path (bench.trees: PYTHONPATH and -P, so that the workers'
servertracker and the daemon's trackerd are that tree's whatever the current
directory holds), which holds one form's records at a time (a fork is inside the
timed span, and a smaller process forks faster). Every competitor runs that way,
this tree's too, so that none is favoured. The path is the C extension where the
tree has it built, or the pure-Python fallback: where this tree (or the
baseline) has a C path, its trackerd competitors run a second time with the
fallback forced (``--no-pure-python`` leaves those rows out); the output says
which files each tree's processes imported and which extension modules they
loaded, and each row says its tree and path.

The competitors (``--competitors``, by key; the default leaves out the ones
marked "optional"):

- ``trackerd``: the product as a worker gets it; workers call
  servertracker.record_server() on a Client with the library's defaults
  (``batch_encoder.DEFAULT_TABLE_ENTRIES``: no value tables, so ``columns``
  messages, every value sent as text) and a queue large enough that nothing
  drops. A ``--baseline`` tree's row takes that tree's default.
- ``interned`` (trackerd interned): the same with value tables of 131,072 ids
  (``Client(table_entries=BULK_TABLE_ENTRIES)``, README's setting for a process
  importing a log that asks for tables): each worker sees 100,000 distinct
  connection IPs and at most 45,000 domains and 5,000 literals (the library
  sends a MAIL FROM's domain part), so no id is ever reused; a value's text goes
  once per worker.
- ``record_many`` (optional): the same as ``trackerd`` with Client.record_many(),
  which waits for room.
- ``no-windows`` (optional): the product without sliding windows (1h and 24h are
  on by default), to show what the windows cost end to end.
- ``small-table`` (optional): ``interned`` with ``Client(table_entries=32768)``,
  smaller than the 100,000 IPs a worker sees, so ids are reused: what a
  too-small table costs.
- ``redis``: Redis's best use (bench.redis_best): each worker takes what follows
  a sender's last "@" (the whole value if it has none), strips trailing ">",
  lowercases a domain and strips its trailing dots (an ``[ip]`` literal is hashed
  as it is, an empty or ``<>`` sender not at all; no other normalising: no IDNA,
  no "<"), and hashes it with keyed BLAKE2b, memoising
  each connection IP's and each domain part's digest (keyed by hash(), 131,072
  entries a dict, cleared when full, as trackerd's worker tables), and sends one
  multi-member SADD per category and one INCRBY of the records count (trackerd
  counts records too) per 1,000 records, written as RESP bytes; a digest its
  memo holds was sent already, so a repeat is not sent again (SADD would change
  nothing; its record still counts); pipelined (it reads the replies at the end,
  parsed by hiredis, and checks each).
- ``redis-repeats`` (optional): the same, sending every record's digests.
- ``redis-waits`` (optional): the same as redis-repeats, waiting for each
  1,000 records' replies before hashing the next: this competitor until
  2026-11-26's bench work, the "before" of the two changes.
- ``naive``: bench/naive_daemon.py, a batched anyio daemon in about 110 lines speaking
  the same protocol (what a quick prototype would be). It lists the ``columns``
  feature, so workers send it the message format a prototype would use today; it
  gets no worker-side split and no value tables (it does not list ``interned``),
  so its workers send every value as text.
- ``go`` (the Go original's design, in-run): the original's design written in Go
  from its package document (bench/go_original/main.go; bench.go_original builds
  it once with ``go build``, standard library only, and runs it): one process, a
  singleton tracker of salted hashes (SHA-256 over salt || value) under a mutex,
  the status JSON rewritten to server_tracker.json on tmpfs on every record, 8
  goroutines each recording its worker's share, the very strings (read from a file
  before its timing starts). The goroutines share the tracker in one process with
  no IPC, as the original's SMTP sessions do; its CPU is that process's over the
  timed span (first record to last), shown as the workers'. Its counts and its
  status file are checked against the true counts. Needs Go (``apt-get install
  golang-go``); without it the row says "not run" and why, and the issue's
  cross-run figure below stays. It is the slowest row (about 30 s a round and
  form here: a file rewritten per record); --competitors without it runs quicker.
- ``alone`` (workers alone): the same forked workers looping over their share and
  calling a function that records nothing: the harness's own cost (its workers'
  CPU is the floor under every competitor's). That floor includes one Python call
  a record, as trackerd's record_server() is called; Redis's loop makes none (it
  hashes inline), so its workers' CPU may come close to the floor. The row's
  "trackerd faster by" and "by total CPU" are "-": a ratio to a run that records nothing means
  nothing.
- the seed design (``--seed-records``, 0 leaves it out): in-process salted sets,
  the whole status JSON rewritten to a file on every record (what the Go original
  does on every RecordServer), see bench.seed_design. It writes a file per record,
  so it runs on the first --seed-records of each worker of ``mix`` only, once a
  round after the forms: its one row is under ``mix``, named with its run size, and
  its ratios are against trackerd's ``mix`` row ("n/a" without one; the sizes
  differ, so a start-up share may too). This is a Python model of the design; the
  table also gives the issue's measured rate of the Go original
  (GO_ORIGINAL_RATE, issue 13's table) and trackerd's ratio to it. That ratio is
  cross-run: this run's trackerd rate over a rate measured in another harness at
  another load (and at 200,000 records a worker: with another --per-worker the
  ratio is "n/a"), so the row says so, and the issue's own in-run ratio (trackerd
  677k against the original's 193k: 3.5x, side by side in its run) is printed
  beside it. The ``go`` row is the in-run one: its "trackerd faster by" is
  measured side by side in this run.

Redis, the naive daemon, the Go design, the workers alone and the seed design run once, in this
tree's default process; the trackerd competitors once per tree and path. "trackerd
faster by" is a row's median time over the ``trackerd`` row's (this tree, its
default path): the issue's metric is records/s, so that is the headline ratio.
"by total CPU" is a row's median total CPU a record over the ``trackerd`` row's
(above 1: trackerd spends less). It is shown beside the time because on a loaded
machine time swings with the load and not alike for all: Redis's workers block in
sendall while the single redis-server thread waits to be scheduled (1.1-1.5 s of a
3.4 s run per worker, measured under load), while trackerd's workers never block
(a flusher thread sends), so the CPU ratio is the steadier of the two.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._support import BenchDaemon, arguments, table, whole_number
from bench.go_original import GoUnavailable, run_go_original
from bench.go_original import build as build_go
from bench.redis_best import WAITS, hiredis_available, run_redis
from bench.seed_design import run_seed_design, seed_directory
from bench.trees import (
    Description,
    Tree,
    TreeProcess,
    baseline_tree,
    check_ran,
    describe,
    extensions_mapped,
    this_tree,
)
from bench.workload import (
    FORMS,
    PER_WORKER,
    WORKERS,
    Run,
    Workload,
    cpu_seconds,
    fork_workers,
    loadavg,
    true_counts,
)
from servertracker import Client
from servertracker.batch_encoder import BULK_TABLE_ENTRIES, DEFAULT_TABLE_ENTRIES

#: The Go original's measured rate (records/s, 8 goroutines), from issue 13's table.
GO_ORIGINAL_RATE = 193_000
#: trackerd's rate in that same run of issue 13 (the in-run context of the above).
GO_RUN_TRACKERD_RATE = 677_000
GO_ORIGINAL = "Go original, issue 13's figure (cross-run: another harness and load)"
#: The Go original's design run here, side by side (bench.go_original).
GO_DESIGN = "Go original's design, in-run (8 goroutines, one process, no IPC)"
SEED_DESIGN = "seed design, Python model (file per record)"
SMALL_TABLE = 32_768
#: The reference row: the workers' loop alone, recording nothing (run_workers_alone).
WORKERS_ALONE = "workers alone (no recording)"
#: The trackerd competitors, run once per tree and path: key -> row name.
TRACKERD = {
    "trackerd": "trackerd",
    "interned": "trackerd interned",
    "record_many": "trackerd record_many",
    "no-windows": "trackerd --windows none",
    "small-table": "trackerd small table",
}
#: The others, run once in this tree's default process: key -> row name.
OTHERS = {
    "redis": "redis (b) best use",
    "redis-repeats": "redis (b), resends repeats",
    "redis-waits": "redis (b), resends repeats, waits for replies",
    "naive": "naive anyio daemon",
    "go": GO_DESIGN,
    "alone": WORKERS_ALONE,
}
DEFAULT_COMPETITORS = ("trackerd", "interned", "redis", "naive", "go", "alone")
#: Where the results go.
RESULTS = Path(__file__).parent / "results"


# --- the competitors, run in a tree's bench process (serve) ---------------------------


def run_protocol_daemon(
    load: Workload,
    extra_args: Sequence[str] = (),
    many: bool = False,
    table_entries: int = DEFAULT_TABLE_ENTRIES,
    command: Sequence[str] | None = None,
    on_start: Callable[[int], object] | None = None,
) -> Run:
    """trackerd (or a daemon speaking its protocol: ``command``), fed by the workers
    through this process's servertracker.Client (by default with the library's
    default value tables: its tree's); on_start(pid) before the timing."""
    daemon = BenchDaemon(extra_args, command).start()
    try:
        assert daemon.process is not None
        if on_start is not None:
            on_start(daemon.process.pid)
        cpu_before = cpu_seconds(daemon.process.pid)
        start = time.perf_counter()

        def work(w: int) -> bool:
            client = Client(
                daemon.socket_path, max_buffered=load.per_worker + 1, table_entries=table_entries
            )
            if many:
                client.record_many(load.shares[w])
            else:
                record_server = client.record_server
                for ip, value in load.shares[w]:
                    record_server(ip, value)
            return client.flush(600) and client.stats().dropped == 0

        worker_cpu = fork_workers(work)
        while (status := daemon.status()).records < load.total:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(daemon.process.pid) - cpu_before
        got = (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers)
        assert got == load.distinct, f"counted {got}, expected {load.distinct}"
        assert status.records == load.total, f"{status.records} records"
        return Run(elapsed, cpu, worker_cpu, extensions_mapped(daemon.process.pid))
    finally:
        daemon.stop()


def _record_nothing(conn_ip: str, sender: str) -> None:
    """What the "workers alone" row calls for each record: nothing."""


def run_workers_alone(load: Workload) -> Run:
    """The workers' loop over their share, each record passed to a function that
    records nothing: what the harness itself costs, with no server."""
    start = time.perf_counter()

    def work(w: int) -> bool:
        record = _record_nothing
        for ip, value in load.shares[w]:
            record(ip, value)
        return True

    worker_cpu = fork_workers(work)
    return Run(time.perf_counter() - start, None, worker_cpu)


NAIVE = [sys.executable, "-P", "-m", "bench.naive_daemon"]
#: Each competitor's run, by key.
RUNS: dict[str, Callable[[Workload], Run]] = {
    "trackerd": lambda load: run_protocol_daemon(load),
    "interned": lambda load: run_protocol_daemon(load, table_entries=BULK_TABLE_ENTRIES),
    "record_many": lambda load: run_protocol_daemon(load, many=True),
    "no-windows": lambda load: run_protocol_daemon(load, ("--windows", "none")),
    "small-table": lambda load: run_protocol_daemon(load, table_entries=SMALL_TABLE),
    "redis": run_redis,
    "redis-repeats": lambda load: run_redis(load, repeats=True),
    "redis-waits": lambda load: run_redis(load, WAITS, repeats=True),
    "naive": lambda load: run_protocol_daemon(load, command=NAIVE),
    "go": run_go_original,
    "alone": run_workers_alone,
}
SEED = "seed"
PREPARE = "prepare"

_load: Workload | None = None


def serve(request: dict[str, Any]) -> dict[str, Any]:
    """One request to a tree's bench process (bench.trees.TreeProcess): the
    competitor's key (or PREPARE: make the form's records, run nothing), the form,
    the records per worker and (to run) their true counts."""
    key, form, per_worker = request["key"], request["form"], request["per_worker"]
    if key == SEED:
        return vars(run_seed_design(Workload(form, per_worker)))
    load = _prepared(form, per_worker)
    if key == PREPARE:
        return {}
    load.distinct = tuple(request["distinct"])
    run = RUNS[key](load)
    run.worker_extensions = extensions_mapped(os.getpid())
    return vars(run)


def _prepared(form: str, per_worker: int) -> Workload:
    """The form's records, made once while the process runs that form."""
    global _load
    if _load is None or (_load.form, _load.per_worker) != (form, per_worker):
        gc.unfreeze()
        _load = None  # the last form's records go before the next's are made
        # The true counts come with each run (taken once, by the parent).
        _load = Workload(form, per_worker, (0, 0, 0))
        # Left out of this process's collections, which would walk 1.6 million
        # tuples and touch the pages the forked workers share.
        gc.collect()
        gc.freeze()
    return _load


# --- the run: who runs where ------------------------------------------------------------


@dataclass(frozen=True)
class Entrant:
    """A row: a competitor's key, run in one tree's process on one path."""

    name: str
    key: str
    tree: Tree
    #: The row's "tree, path" cell ("-": the competitor is not trackerd).
    runs: str


def choose_competitors(spec: str) -> list[str]:
    """--competitors' keys, in the order the table shows them; SystemExit on a typo."""
    if spec == "all":
        return [*TRACKERD, *OTHERS]
    keys = [key.strip() for key in spec.split(",") if key.strip()]
    unknown = [key for key in keys if key not in TRACKERD and key not in OTHERS]
    if unknown or not keys:
        raise SystemExit(
            f"--competitors: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join([*TRACKERD, *OTHERS])}, or all"
        )
    return [key for key in (*TRACKERD, *OTHERS) if key in keys]


def choose_forms(spec: str) -> list[str]:
    forms = [form.strip() for form in spec.split(",") if form.strip()]
    unknown = [form for form in forms if form not in FORMS]
    if unknown or not forms:
        raise SystemExit(
            f"--forms: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(FORMS)}"
        )
    return forms


def choose_trees(
    baseline: Path | None, pure_python: bool
) -> tuple[list[Tree], dict[Tree, Description]]:
    """Each tree and path to run trackerd in, described (which files, which path):
    this tree first (the reference), then its pure-Python fallback if it has a C path,
    then the baseline's likewise."""
    roots = [this_tree()] + ([baseline_tree(baseline)] if baseline is not None else [])
    trees: list[Tree] = []
    described: dict[Tree, Description] = {}
    for tree in roots:
        described[tree] = describe(tree)
        trees.append(tree)
        if pure_python and described[tree].extensions:
            pure = Tree(tree.label, tree.root, pure=True)
            described[pure] = describe(pure)
            if described[pure].extensions:
                raise SystemExit(
                    f"{tree.root}: its extension modules load even with the pure-Python "
                    f"path forced ({', '.join(described[pure].extensions)})"
                )
            trees.append(pure)
    return trees, described


def entrants(
    keys: list[str], trees: list[Tree], described: dict[Tree, Description]
) -> list[Entrant]:
    rows = []
    for tree in trees:
        where = f"{tree.label or 'this'}, {described[tree].path}"
        rows += [
            Entrant(TRACKERD[key] + tree.name(), key, tree, where)
            for key in keys
            if key in TRACKERD
        ]
    return rows + [Entrant(OTHERS[key], key, trees[0], "-") for key in keys if key in OTHERS]


def tree_lines(described: dict[Tree, Description]) -> list[str]:
    """The output's header: each tree and path, what its processes imported."""
    lines = []
    for tree, about in described.items():
        loaded = ", ".join(about.extensions) or "none"
        lines.append(
            f"{tree.label or 'this'} tree, {about.path}: {tree.root} ({about.revision}); "
            f"trackerd from {Path(about.trackerd).parent}, servertracker from "
            f"{Path(about.servertracker).parent}; extension modules loaded: {loaded}"
            + (" (pure Python forced)" if tree.pure else "")
        )
    return lines


def check_path(row: Entrant, run: Run, about: Description) -> None:
    """Fail at once, not after the whole run, if a daemon or the workers' parent ran
    other code than its row says (bench.trees.check_ran): an extension module from
    another tree, one on the pure-Python path, or a trackerd row on the C path
    without its tree's extension modules."""
    loaded = (run.server_extensions or []) + (run.worker_extensions or [])
    packages = ("trackerd.", "servertracker.") if row.key in TRACKERD else ()
    check_ran(row.name, row.tree, about, loaded, packages)


def measure(
    forms: list[str],
    rows: list[Entrant],
    described: dict[Tree, Description],
    rounds: int,
    per_worker: int,
    seed_records: int,
) -> tuple[dict[str, dict[str, list[Run]]], list[Run]]:
    """Every form's rounds, each tree's competitors in that tree's bench process."""
    processes: dict[Tree, TreeProcess] = {}

    def process(tree: Tree) -> TreeProcess:
        if tree not in processes:
            processes[tree] = TreeProcess(tree, "bench.compare", "serve")
        return processes[tree]

    def call(tree: Tree, request: dict[str, Any]) -> Run:
        return Run(**process(tree).call(request))

    runs: dict[str, dict[str, list[Run]]] = {f: {row.name: [] for row in rows} for f in forms}
    seed_runs: list[Run] = []
    try:
        for form in forms:
            # Each tree's process makes the form's records while this one takes their
            # true counts: no run is timed meanwhile.
            began = time.perf_counter()
            making = [process(tree) for tree in dict.fromkeys(row.tree for row in rows)]
            for each in making:
                each.send({"key": PREPARE, "form": form, "per_worker": per_worker})
            distinct = true_counts(form, per_worker)
            counted = time.perf_counter() - began
            for each in making:
                each.receive()
            print(f"{form:14} records made in {time.perf_counter() - began:.1f} s (true counts "
                  f"{counted:.1f} s)", flush=True)  # fmt: skip
            for number in range(rounds):
                order = rows[number % len(rows) :] + rows[: number % len(rows)]
                for row in order:
                    request = {
                        "key": row.key,
                        "form": form,
                        "per_worker": per_worker,
                        "distinct": distinct,
                    }
                    began = time.perf_counter()
                    result = call(row.tree, request)
                    took = time.perf_counter() - began
                    check_path(row, result, described[row.tree])
                    runs[form][row.name].append(result)
                    print(
                        f"{form:14} round {number + 1}  {row.name:40} {result.seconds:6.2f} s "
                        f"timed, {took:6.2f} s in all",
                        flush=True,
                    )
        for number in range(rounds if seed_records else 0):
            request = {"key": SEED, "form": "mix", "per_worker": seed_records}
            seed_runs.append(call(rows[0].tree if rows else this_tree(), request))
            print(
                f"seed design round {number + 1}: {seed_runs[-1].seconds:.2f} s for "
                f"{WORKERS * seed_records:,} records",
                flush=True,
            )
    finally:
        for running in processes.values():
            running.close()
    return runs, seed_runs


# --- the table ----------------------------------------------------------------------------

HEADERS = [
    "form",
    "competitor",
    "tree, path",
    "median s",
    "records/s",
    "trackerd faster by",
    "by total CPU",
    "server CPU µs/record",
    "workers CPU µs/record",
    "total CPU µs/record",
]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _total_cpu(runs: list[Run]) -> float:
    """The median of the runs' total CPU seconds (server + workers)."""
    return _median([(r.server_cpu or 0) + r.worker_cpu for r in runs])


#: The table's footnote: which ratio is the issue's, and why the other is shown.
FOOTNOTE = (
    "The issue's metric is records/s: \"trackerd faster by\" is a row's median time over "
    "the trackerd row's. \"by total CPU\" is a row's median total CPU (server + workers) "
    "a record over the trackerd row's, shown because time swings with the machine's load "
    "and not alike for all: Redis's workers block in sendall while redis-server waits to "
    "be scheduled, trackerd's never block (a flusher thread sends)."
)


def results(
    forms: list[str],
    rows: list[Entrant],
    runs: dict[str, dict[str, list[Run]]],
    seed_runs: list[Run],
    per_worker: int,
    seed_records: int,
    go_not_run: str | None = None,
) -> tuple[list[list[str]], dict[str, dict[str, dict[str, Any]]]]:
    """The table's rows and the JSON's "forms"; ``go_not_run``: why the ``go``
    competitor, asked for, could not run (its row says so)."""
    total = WORKERS * per_worker
    reference = next((r.name for r in rows if r.key == "trackerd" and r.tree == rows[0].tree), None)
    table_rows: list[list[str]] = []
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for form in forms:
        ours = _median([r.seconds for r in runs[form][reference]]) if reference else None
        ours_cpu = _total_cpu(runs[form][reference]) if reference else None
        out[form] = {}
        for row in rows:
            got = runs[form][row.name]
            seconds = _median([r.seconds for r in got])
            cpus = [r.server_cpu for r in got if r.server_cpu is not None]
            server_us = _median(cpus) * 1e6 / total if cpus else None
            worker_us = _median([r.worker_cpu for r in got]) * 1e6 / total
            total_us = _total_cpu(got) * 1e6 / total
            ratio = "-" if row.key == "alone" or ours is None else f"{seconds / ours:.2f}x"
            cpu_ratio = (
                "-" if row.key == "alone" or not ours_cpu else f"{_total_cpu(got) / ours_cpu:.2f}x"
            )
            table_rows.append(
                [
                    form,
                    row.name,
                    row.runs,
                    f"{seconds:.2f}",
                    f"{total / seconds:,.0f}",
                    ratio,
                    cpu_ratio,
                    "-" if server_us is None else f"{server_us:.2f}",
                    f"{worker_us:.2f}",
                    f"{total_us:.2f}",
                ]
            )
            out[form][row.name] = {
                "key": row.key,
                "tree": str(row.tree.root),
                "tree_path": row.runs,
                "seconds": [r.seconds for r in got],
                "server_cpu_seconds": [r.server_cpu for r in got],
                "worker_cpu_seconds": [r.worker_cpu for r in got],
                "daemon_extensions": sorted({f for r in got for f in r.server_extensions or []}),
                "worker_extensions": sorted({f for r in got for f in r.worker_extensions or []}),
                "median_seconds": seconds,
                "records_per_second": total / seconds,
                "server_cpu_us_per_record": server_us,
                "worker_cpu_us_per_record": worker_us,
                "total_cpu_us_per_record": total_us,
                "total_cpu_over_trackerds": (
                    None if cpu_ratio == "-" else _total_cpu(got) / (ours_cpu or 1)
                ),
            }
        if go_not_run is not None:
            table_rows.append([form, GO_DESIGN, f"not run: {go_not_run}", *["-"] * 7])
        if ours is None:
            continue
        if seed_runs and form == "mix":
            table_rows.append(
                _seed_row(
                    seed_runs,
                    seed_records,
                    total / ours,
                    None if ours_cpu is None else ours_cpu / total,
                )
            )
        in_issue = f"(the issue's in-run: {GO_RUN_TRACKERD_RATE / GO_ORIGINAL_RATE:.1f}x)"
        table_rows.append(
            [
                form,
                GO_ORIGINAL,
                "-",
                "-",
                f"{GO_ORIGINAL_RATE:,}",
                # The issue's rate is of PER_WORKER records a worker: a run of another
                # size (a start-up share unlike) is no ratio to it.
                f"{total / ours / GO_ORIGINAL_RATE:.1f}x cross-run {in_issue}"
                if per_worker == PER_WORKER
                else f"n/a: --per-worker != {PER_WORKER:,} {in_issue}",
                "-",
                "-",
                "-",
                "-",
            ]
        )
    if seed_runs and "mix" not in forms:
        table_rows.append(_seed_row(seed_runs, seed_records, None, None))
    return table_rows, out


def _seed_row(
    seed_runs: list[Run], seed_records: int, ours_rate: float | None, ours_cpu: float | None
) -> list[str]:
    """The seed design's row: it runs on `mix` only, at --seed-records a worker, so
    it is a `mix` row and its ratios are against trackerd's `mix` row (rate in
    records/s, CPU in seconds a record; None: no such row in this run)."""
    seed_rate = WORKERS * seed_records / _median([r.seconds for r in seed_runs])
    seed_us = _median([r.worker_cpu for r in seed_runs]) * 1e6 / (WORKERS * seed_records)
    no_mix = "n/a: trackerd did not run `mix`"
    return [
        "mix",
        f"{SEED_DESIGN}, {seed_records:,} a worker",
        "-",
        "-",
        f"{seed_rate:,.0f}",
        no_mix if ours_rate is None else f"{ours_rate / seed_rate:.1f}x",
        "-" if not ours_cpu else f"{seed_us / (ours_cpu * 1e6):.1f}x",
        "-",
        f"{seed_us:.2f}",
        f"{seed_us:.2f}",
    ]


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub table; a form's cell in backquotes (``<user@domain>`` would be HTML)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in rows]
    return "\n".join(lines)


def check_results(directory: Path) -> None:
    """Make the --results directory and check it takes files, before the first round:
    SystemExit with one line if not (not a traceback after the whole run)."""
    probe = directory / ".compare-write-check"
    if directory.exists() and not directory.is_dir():
        raise SystemExit(f"--results {directory}: not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"--results {directory}: cannot write there: {error.strerror}") from None


def write_results(directory: Path, md: str, result: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "compare.md").write_text(md + "\n")
    (directory / "compare.json").write_text(json.dumps(result, indent=2) + "\n")


def parser() -> argparse.ArgumentParser:
    parser = arguments("bench.compare", __doc__)
    parser.add_argument(
        "--rounds", type=whole_number(), default=3, help="rounds, competitors alternated"
    )
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated sender forms")
    parser.add_argument(
        "--competitors",
        default=",".join(DEFAULT_COMPETITORS),
        help="comma-separated competitor keys (see above), or all",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the trackerd competitors with the library and daemon "
        "of the checkout in DIR (e.g. git archive REV | tar -x -C DIR)",
    )
    parser.add_argument(
        "--pure-python",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="where a tree has a C path, also run its trackerd competitors "
        "with the pure-Python fallback forced",
    )
    parser.add_argument(
        "--per-worker", type=whole_number(), default=PER_WORKER, help="records per worker"
    )
    parser.add_argument(
        "--seed-records",
        type=whole_number(0),
        default=5_000,
        help="records per worker for the slow seed design (0: leave it out)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        metavar="DIR",
        help="where compare.json and compare.md go",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.rounds < 1 or args.per_worker < 1 or args.seed_records < 0:
        raise SystemExit("--rounds and --per-worker must be at least 1, --seed-records 0 or more")
    forms = choose_forms(args.forms)
    keys = choose_competitors(args.competitors)
    notes = []
    if any(key.startswith("redis") for key in keys):
        why = (
            ""
            if shutil.which("redis-server")
            else "redis-server not found (apt-get install redis-server)"
        ) or ("" if hiredis_available() else "hiredis not installed (pip install -e '.[bench]')")
        if why:
            keys = [key for key in keys if not key.startswith("redis")]
            notes.append(f"Redis left out: {why}")
        else:
            notes.append("Redis's workers parse replies with hiredis")
    go_not_run = None
    if "go" in keys:
        try:
            notes.append(f"the Go design's program: {build_go()}")
        except GoUnavailable as error:
            keys.remove("go")
            go_not_run = str(error)
            notes.append(f"the Go original's design not run: {error}")
    trees, described = choose_trees(args.baseline, args.pure_python)
    rows = entrants(keys, trees, described)
    if not rows:
        raise SystemExit("nothing to run" + "".join(f"; {note}" for note in notes))
    header = tree_lines(described) + notes
    if args.seed_records:
        where = seed_directory()
        header.append(
            f"seed design writes in {where}"
            + ("" if where == "/dev/shm" else " (no /dev/shm here: a disk, not tmpfs)")
        )
    for line in header:
        print(line)
    check_results(args.results)
    load_before = loadavg()
    print(f"load average before: {load_before}", flush=True)
    runs, seed_runs = measure(
        forms, rows, described, args.rounds, args.per_worker, args.seed_records
    )
    load_after = loadavg()
    table_rows, per_form = results(
        forms, rows, runs, seed_runs, args.per_worker, args.seed_records, go_not_run
    )
    heading = (
        f"{WORKERS} forked workers x {args.per_worker:,} records a form, {args.rounds} "
        f"round{'s' if args.rounds != 1 else ''}, medians; "
        f"load average before {load_before}, after {load_after}"
    )
    md = "\n".join(
        [
            f"`python -m bench.compare {' '.join(sys.argv[1:] if argv is None else argv)}`",
            "",
            heading,
            "",
            *(f"- {line}" for line in header),
            "",
            markdown(HEADERS, table_rows),
            "",
            FOOTNOTE,
        ]
    )
    print()
    print(heading)
    print(table(HEADERS, table_rows))
    print(FOOTNOTE)
    print()
    print(md)
    result = {
        "records_per_form": WORKERS * args.per_worker,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "trees": [
            {"tree": str(t.root), "label": t.label, "pure_forced": t.pure, **asdict(about)}
            for t, about in described.items()
        ],
        "notes": notes,
        "seed_worker_cpu_seconds": [r.worker_cpu for r in seed_runs],
        "seed_seconds": [r.seconds for r in seed_runs],
        "seed_records": WORKERS * args.seed_records,
        # Cross-run: issue 13's figures, not measured here (see GO_ORIGINAL); the
        # in-run one is the "go" competitor's row in "forms".
        "go_not_run": go_not_run,
        "go_original_records_per_second": GO_ORIGINAL_RATE,
        "go_original_run_trackerd_records_per_second": GO_RUN_TRACKERD_RATE,
        "forms": per_form,
    }
    try:
        write_results(args.results, md, result)
    except OSError as error:
        raise SystemExit(f"--results {args.results}: cannot write: {error.strerror}") from None
    print(f"\nwritten to {args.results / 'compare.json'} and compare.md")


if __name__ == "__main__":
    main()
