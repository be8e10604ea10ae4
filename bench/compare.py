"""trackerd against what operators would use instead, on every sender form, side by side.

Run: ``python -m bench.compare [--rounds 5]`` (needs Debian's redis-server and the
bench extra: ``apt-get install redis-server; pip install -e '.[bench]'``).

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
timing (as an SMTP worker's values are new objects). Within a round every form
runs every competitor, and the order of competitors rotates from round to round,
so a load that comes and goes on this shared machine falls on each alike.
Medians and ratios are printed and written to bench/results/compare.json, with
the load average before and after.

- trackerd: the product; workers call servertracker.record_server() with a queue
  large enough that nothing drops, and value tables of 131,072 ids (``interned``
  messages; README's setting for a process importing a log,
  ``table_entries=BULK_TABLE_ENTRIES``; an SMTP worker's default is 16,384): each
  worker sees 100,000 distinct connection IPs and at most 45,000 domains and 5,000
  literals (the library sends a MAIL FROM's domain part), so no id is ever reused;
  a value's text goes once per worker.
- trackerd columns: the same with ``Client(table_entries=0)``: every value sent as
  text in ``columns`` messages (what a worker with PYTHONHASHSEED set sends, and
  what every worker sent before value tables).
- trackerd record_many: the same with Client.record_many(), which waits for room.
- trackerd --windows none: the product without sliding windows (1h and 24h are on
  by default), to show what the windows cost end to end.
- redis (b): Redis's best use: each worker hashes the raw domain part (no
  normalising, as the original) with keyed BLAKE2b, memoising each connection
  IP's and each domain part's digest (a dict from hash() of the IP or of the
  sender's domain part to its digest, 131,072 entries a dict, cleared when full,
  as trackerd's worker tables, which also number a sender's domain part), and
  sends one multi-member SADD per category and one INCRBY of the records count
  (trackerd counts records too) per 1,000 records, written as RESP bytes and sent
  in one send, replies parsed by hiredis (whether hiredis was used is printed and
  recorded; see run_redis).
- trackerd small table: ``Client(table_entries=32768)``, smaller than the 100,000
  IPs a worker sees, so ids are reused: what a too-small table costs.
- naive anyio daemon: bench/naive_daemon.py, a batched asyncio daemon in 100 lines
  speaking the same protocol (what a quick prototype would be). It lists the
  ``columns`` feature, so workers send it the message format a prototype would use
  today; it gets no worker-side split and no value tables (it does not list
  ``interned``), so its workers send every value as text.
- workers alone: the same forked workers looping over their share and calling a
  function that records nothing: the harness's own cost (its workers' CPU is the
  floor under every competitor's). That floor includes one Python call a record,
  as trackerd's record_server() is called; Redis's loop makes none (it hashes
  inline), so its workers' CPU may come close to the floor. The row's "trackerd
  is faster by" is "-": a ratio to a run that records nothing means nothing.
- seed design: in-process salted sets, the whole status JSON rewritten to a file on
  every record (what the Go original does on every RecordServer): the workers
  rewrite one shared file, each with its own sets (see run_seed_design), and each
  worker's counts are asserted against its share's. It writes a
  file per record, so it runs on the first --seed-records of each worker only, and
  its rate is compared. The file goes in a tmpfs directory (/dev/shm), as the
  original's runtime directory (/run) is on a systemd host; where there is no
  /dev/shm it goes in /tmp, and the output says so. This is a Python model of the
  design; the table also gives the issue's measured rate of the Go original
  (GO_ORIGINAL_RATE, issue 13's table) and trackerd's ratio to it. That ratio is
  cross-run: this run's trackerd rate over a rate measured in another harness at
  another load (there is no Go toolchain here), so the row says so, and the issue's
  own in-run ratio (trackerd 677k against the original's 193k: 3.5x, side by side
  in its run) is printed beside it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._support import BenchDaemon, arguments, table
from servertracker import Client
from servertracker.batch_encoder import BULK_TABLE_ENTRIES
from trackerd.core.normalise import Category, classify_conn_ip, classify_sender

WORKERS = 8
PER_WORKER = 200_000
CONN_IPS = 100_000
DOMAINS = 45_000
LITERALS = 5_000
FORMS = ("domain", "user@domain", "<user@domain>", "[ip]", "mix")
#: The Go original's measured rate (records/s, 8 goroutines), from issue 13's table.
GO_ORIGINAL_RATE = 193_000
#: trackerd's rate in that same run of issue 13 (the in-run context of the above).
GO_RUN_TRACKERD_RATE = 677_000
GO_ORIGINAL = "Go original, issue 13's run (cross-run, not side by side)"
#: The Redis row's name without hiredis: a handicapped figure, not the best use.
REDIS_NO_HIREDIS = "redis (b) (no hiredis)"
SMALL_TABLE = 32_768
#: The reference row: the workers' loop alone, recording nothing (run_workers_alone).
WORKERS_ALONE = "workers alone (no recording)"
_TICK = os.sysconf("SC_CLK_TCK")


def _literal(n: int) -> str:
    return f"[192.0.{n // 256}.{n % 256}]"


def sender(form: str, r: int) -> str:
    """The sender of record r in a form; one in ten is an IP literal (all in "[ip]")."""
    if form == "mix":
        form = FORMS[r % 4]
        if r % 50 == 7:
            return "<>"
        if r % 50 == 9:
            return f"User@MAIL{r % DOMAINS}.Example.COM."
    if form == "[ip]" or r % 10 == 0:
        literal = _literal(r % LITERALS)
        return {"domain": literal, "[ip]": literal, "user@domain": f"postmaster@{literal}"}.get(
            form, f"<postmaster@{literal}>"
        )
    domain = f"mail{r % DOMAINS}.example.com"
    if form == "domain":
        return domain
    if form == "user@domain":
        return f"user{r % 7}@{domain}"
    return f"<user{r % 7}@{domain}>"


def conn_ip(r: int) -> str:
    ip = r % CONN_IPS
    return f"10.{ip // 65536}.{ip // 256 % 256}.{ip % 256}"


class Workload:
    """Every worker's share of one form, made before any timing, and its true counts."""

    def __init__(self, form: str, per_worker: int) -> None:
        self.form = form
        self.per_worker = per_worker
        self.total = WORKERS * per_worker
        # Strings are made per record, as an SMTP server makes them per message,
        # and nothing hashes them before the workers do (a str caches its hash()).
        self.shares = make_shares(form, per_worker)
        self.distinct = _true_counts(form, per_worker)


def make_shares(form: str, per_worker: int) -> list[list[tuple[str, str]]]:
    """Every worker's (connection IP, sender) pairs, as new str objects."""
    return [
        [(conn_ip(r), sender(form, r)) for r in range(w * per_worker, (w + 1) * per_worker)]
        for w in range(WORKERS)
    ]


def _true_counts(form: str, per_worker: int) -> tuple[int, int, int]:
    """The distinct counts, from strings made apart from the workers' (same values)."""
    return distinct_counts(make_shares(form, per_worker))


def distinct_counts(shares: list[list[tuple[str, str]]]) -> tuple[int, int, int]:
    """The distinct counts of these shares' records, taken together."""
    ips = {ip for share in shares for ip, _ in share}
    senders = {s for share in shares for _, s in share}
    keys: list[set[bytes]] = [set(), set(), set()]
    for ip in ips:
        key = classify_conn_ip(ip)
        if type(key) is bytes:
            keys[Category.CONN_IP].add(key)
    for value in senders:
        classified = classify_sender(value)
        if type(classified) is tuple:
            keys[classified[0]].add(classified[1])
    return (len(keys[0]), len(keys[1]), len(keys[2]))


def fork_workers(work: Callable[[int], bool]) -> float:
    """Run work(w) in WORKERS forked processes; raise if any fails. Returns the
    workers' CPU seconds (user + system, all their threads, from os.wait4)."""
    pids = []
    for w in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # As a pre-fork server would: what the parent made (here the whole
                # workload) is left out of the child's garbage collections, which
                # would otherwise walk it, and copy every page they touch.
                gc.freeze()
                code = 0 if work(w) else 1
            finally:
                os._exit(code)
        pids.append(pid)
    failed = 0
    cpu = 0.0
    for pid in pids:
        _, status, usage = os.wait4(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
        cpu += usage.ru_utime + usage.ru_stime
    if failed:
        raise RuntimeError(f"{failed} workers failed")
    return cpu


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Run:
    """One timed run: seconds, the server's CPU seconds (None when it has none), and
    the workers' CPU seconds."""

    def __init__(self, seconds: float, server_cpu: float | None, worker_cpu: float) -> None:
        self.seconds = seconds
        self.server_cpu = server_cpu
        self.worker_cpu = worker_cpu


# --- trackerd (and any daemon speaking its protocol) --------------------------------


def run_protocol_daemon(
    load: Workload,
    start_daemon: Callable[[], BenchDaemon],
    many: bool = False,
    table_entries: int = BULK_TABLE_ENTRIES,
) -> Run:
    daemon = start_daemon()
    try:
        assert daemon.process is not None
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
        return Run(elapsed, cpu, worker_cpu)
    finally:
        daemon.stop()


def start_trackerd() -> BenchDaemon:
    return BenchDaemon().start()


def start_trackerd_without_windows() -> BenchDaemon:
    return BenchDaemon(["--windows", "none"]).start()


def start_naive() -> BenchDaemon:
    return BenchDaemon(command=[sys.executable, "-m", "bench.naive_daemon"]).start()


# --- the harness alone -----------------------------------------------------------------


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


# --- Redis --------------------------------------------------------------------------

SET_NAMES = ("conn_ips", "domains", "ip_servers")
RECORDS_NAME = "records"
_UNSEEN = (-1, b"")  # a sender memo's default: not hashed yet


class RedisServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stbr-", dir="/tmp"))
        self.socket = self.dir / "redis.sock"
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", "0", "--unixsocket", str(self.socket)),
                *("--unixsocketperm", "700", "--save", "", "--appendonly", "no"),
                *("--dir", str(self.dir)),
            ],
            stdout=subprocess.DEVNULL,
        )
        # The socket file appears at bind(), a moment before listen(): wait for
        # a PING to be answered, not merely for the file.
        import redis  # a benchmark-only dependency

        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(unix_socket_path=str(self.socket)).ping():
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _hashers(salt: bytes) -> tuple[hashlib._Hash, ...]:  # type: ignore[name-defined]
    return tuple(hashlib.blake2b(key=salt, digest_size=8, person=b"w-%d" % c) for c in Category)


def _digest(hashers: tuple[hashlib._Hash, ...], category: int, key: bytes) -> bytes:  # type: ignore[name-defined]
    h = hashers[category].copy()
    h.update(key)
    return h.digest()


REDIS_SLICE = 1_000  # records hashed per round trip to Redis
#: Entries of each of a Redis worker's digest memos (trackerd's default table size).
REDIS_MEMO = BULK_TABLE_ENTRIES


def hiredis_used() -> bool:
    """Whether redis-py parses replies in C (hiredis), as Redis at its best needs."""
    import redis.utils  # a benchmark-only dependency

    return bool(redis.utils.HIREDIS_AVAILABLE)


def run_redis(load: Workload) -> Run:
    """Redis's best use, as an expert would write it: the competitor at its strongest.

    Each worker hashes the domain part, lowercased (no other normalising, as the
    original's callers pass it), and the connection IP with keyed BLAKE2b, in slices
    of 1,000 records, in a loop with its methods bound once and one branch per
    sender. A digest is memoised per worker (connection IPs and senders apart),
    keyed by hash() of the connection IP and of the sender's domain part (a sender
    with an "@" is cut to what follows its last "@" first, one without is keyed as
    it is), never by the text itself, as trackerd's worker tables (its worker too
    cuts a sender to its domain part before numbering it), in dicts of at most
    REDIS_MEMO entries, cleared when full. Keying by the part, not the whole
    sender, is what lets the memo hit on the ``user@domain`` forms, whose whole
    senders are nearly all distinct (of the variants timed in one process with no
    send, this one loop was the fastest over the forms taken together). Every member is an
    8-byte digest, so the slice's multi-member SADDs (one per category) and one
    INCRBY of the records count are written as RESP bytes directly, with no
    per-argument packing, sent in one send on one Unix-socket connection, and
    answered by one reply read per command (parsed in C by hiredis, see
    hiredis_used). That is one round trip and at most four commands per 1,000
    records, with the least Python per record a client can do; redis-server (no
    persistence) then does only the set insertions and the sum.
    """
    import redis  # a benchmark-only dependency

    server = RedisServer()
    salt = secrets.token_bytes(32)
    try:
        cpu_before = cpu_seconds(server.process.pid)
        start = time.perf_counter()

        def work(w: int) -> bool:
            return _redis_worker(server.socket, salt, load.shares[w])

        worker_cpu = fork_workers(work)
        db = redis.Redis(unix_socket_path=str(server.socket))
        got = tuple(db.scard(name) for name in SET_NAMES)
        records = int(db.get(RECORDS_NAME) or 0)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(server.process.pid) - cpu_before
        assert got == load.distinct, f"redis counted {got}, expected {load.distinct}"
        assert records == load.total, f"redis counted {records} records"
        return Run(elapsed, cpu, worker_cpu)
    finally:
        server.stop()


def _redis_worker(socket: Path, salt: bytes, share: list[tuple[str, str]]) -> bool:
    """One worker of run_redis: hash (memoised), then SADD and INCRBY each slice in
    a single send."""
    import redis  # a benchmark-only dependency

    conn = redis.UnixDomainSocketConnection(path=str(socket))
    send, read = conn.send_packed_command, conn.read_response
    ip_hasher, domain_hasher, literal_hasher = _hashers(salt)
    ip_copy, domain_copy, literal_copy = ip_hasher.copy, domain_hasher.copy, literal_hasher.copy
    names = [name.encode() for name in SET_NAMES]
    records = RECORDS_NAME.encode()
    # hash() of the IP or domain part -> its digest; a sender's also says its set
    # (None: no set).
    ip_memo: dict[int, bytes] = {}
    sender_memo: dict[int, tuple[int, bytes] | None] = {}
    for first in range(0, len(share), REDIS_SLICE):
        members: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        add_ip = members[0].append
        if len(ip_memo) > REDIS_MEMO - REDIS_SLICE:
            ip_memo.clear()
        if len(sender_memo) > REDIS_MEMO - REDIS_SLICE:
            sender_memo.clear()
        get_ip, get_sender = ip_memo.get, sender_memo.get
        chunk = share[first : first + REDIS_SLICE]
        for ip, value in chunk:
            key = hash(ip)
            digest = get_ip(key)
            if digest is None:
                h = ip_copy()
                h.update(ip.encode())
                digest = ip_memo[key] = h.digest()
            add_ip(digest)
            # As trackerd's worker, cut to the domain part before the memo (whole
            # senders are nearly all distinct; their domains repeat): what follows
            # the last "@" (a bracketed sender's ">" kept, to spare a call), or the
            # value as it is when it has no "@" (the domain form, a literal, "<>").
            if "@" in value:
                value = value.rpartition("@")[2]
            key = hash(value)
            found = get_sender(key, _UNSEEN)
            if found is _UNSEEN:
                found = None
                # The original's callers pass the domain part; take it, unnormalised.
                part = value.rstrip(">")
                if part and part != "<":
                    if part[0] == "[":
                        h = literal_copy()
                        h.update(part.encode())
                        found = (2, h.digest())
                    else:
                        h = domain_copy()
                        h.update(part.lower().rstrip(".").encode())
                        found = (1, h.digest())
                sender_memo[key] = found
            if found is not None:
                members[found[0]].append(found[1])
        out: list[bytes] = []
        for name, digests in zip(names, members, strict=True):
            if digests:
                # SADD name member...: every member is an 8-byte digest.
                out.append(
                    b"*%d\r\n$4\r\nSADD\r\n$%d\r\n%s\r\n" % (len(digests) + 2, len(name), name)
                )
                out.append(b"$8\r\n" + b"\r\n$8\r\n".join(digests) + b"\r\n")
        count = b"%d" % len(chunk)
        out.append(
            b"*3\r\n$6\r\nINCRBY\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(records), records, len(count), count)
        )
        send([b"".join(out)])
        for _ in range(len(out) // 2 + 1):
            read()
    conn.disconnect()
    return True


# --- the seed's design ----------------------------------------------------------------


def seed_directory() -> str:
    """Where the seed design writes: tmpfs, as the original's runtime directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"


def run_seed_design(load: Workload) -> Run:
    """In-process sets, and the status file rewritten on every record, as the original.

    Every worker rewrites the one status file, as the original's goroutines do.
    The sets are not shared: the original's goroutines share theirs under a mutex
    in one process, and sharing Python sets across forked processes would need a
    server process or shared memory, a cost the design does not have; so each
    worker keeps its own sets, writes its own counts, and asserts them against its
    share's true counts (made apart, before timing), so a broken model fails. The
    writes to the one file are not serialised (the original holds its mutex while
    writing), which if anything flatters the model.
    """
    directory = Path(tempfile.mkdtemp(prefix="stbs-", dir=seed_directory()))
    salt = secrets.token_bytes(32)
    path = directory / "server_tracker.json"
    expected = [distinct_counts([share]) for share in make_shares(load.form, load.per_worker)]
    try:
        start = time.perf_counter()

        def work(w: int) -> bool:
            hashers = _hashers(salt)
            sets: list[set[bytes]] = [set(), set(), set()]
            boot = int(time.time())
            for ip, value in load.shares[w]:
                key = classify_conn_ip(ip)
                if type(key) is bytes:
                    sets[Category.CONN_IP].add(_digest(hashers, Category.CONN_IP, key))
                classified = classify_sender(value)
                if type(classified) is tuple:
                    sets[classified[0]].add(_digest(hashers, *classified))
                status = {
                    "boot_time": boot,
                    "unique_conn_ips": len(sets[0]),
                    "unique_domains": len(sets[1]),
                    "unique_ip_servers": len(sets[2]),
                }
                path.write_text(json.dumps(status))
            got = (len(sets[0]), len(sets[1]), len(sets[2]))
            if got != expected[w]:
                print(f"seed design worker {w} counted {got}, expected {expected[w]}")
                return False
            return True

        worker_cpu = fork_workers(work)
        return Run(time.perf_counter() - start, None, worker_cpu)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- the run --------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = arguments("bench.compare", __doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds, competitors alternated")
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated sender forms")
    parser.add_argument("--per-worker", type=int, default=PER_WORKER, help="records per worker")
    parser.add_argument(
        "--seed-records",
        type=int,
        default=5_000,
        help="records per worker for the slow seed design (0: leave it out)",
    )
    parser.add_argument("--only", help="run only competitors whose name contains this")
    args = parser.parse_args()
    forms = args.forms.split(",")

    loads = {form: Workload(form, args.per_worker) for form in forms}
    seed_load = Workload("mix", args.seed_records) if args.seed_records else None
    competitors: dict[str, Callable[[Workload], Run]] = {
        "trackerd": lambda load: run_protocol_daemon(load, start_trackerd),
        "trackerd columns": lambda load: run_protocol_daemon(load, start_trackerd, table_entries=0),
        "trackerd record_many": lambda load: run_protocol_daemon(load, start_trackerd, True),
        "trackerd --windows none": lambda load: run_protocol_daemon(
            load, start_trackerd_without_windows
        ),
        "trackerd small table": lambda load: run_protocol_daemon(
            load, start_trackerd, table_entries=SMALL_TABLE
        ),
    }
    hiredis = None
    if shutil.which("redis-server"):
        hiredis = hiredis_used()
        competitors["redis (b) best use" if hiredis else REDIS_NO_HIREDIS] = run_redis
        print(f"redis-py parses with hiredis: {'yes' if hiredis else 'NO (Redis handicapped)'}")
    else:
        print("redis-server not found (apt-get install redis-server): Redis left out")
    competitors["naive anyio daemon"] = lambda load: run_protocol_daemon(load, start_naive)
    competitors[WORKERS_ALONE] = run_workers_alone
    if args.only:
        kept = ("trackerd", WORKERS_ALONE)
        competitors = {n: c for n, c in competitors.items() if args.only in n or n in kept}

    if seed_load is not None:
        where = seed_directory()
        print(
            f"seed design writes in {where}"
            + ("" if where == "/dev/shm" else " (no /dev/shm here: a disk, not tmpfs)")
        )
    names = list(competitors)
    runs: dict[str, dict[str, list[Run]]] = {f: {n: [] for n in names} for f in forms}
    seed_runs: list[Run] = []
    load_before = loadavg()
    for round_number in range(args.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for form in forms:
            for name in order:
                result = competitors[name](loads[form])
                runs[form][name].append(result)
                print(
                    f"round {round_number + 1} {form:14} {name:22} {result.seconds:6.2f} s",
                    flush=True,
                )
        if seed_load is not None:
            seed_runs.append(run_seed_design(seed_load))
            print(
                f"round {round_number + 1} seed design: {seed_runs[-1].seconds:.2f} s "
                f"for {seed_load.total:,} records",
                flush=True,
            )
    load_after = loadavg()

    seed_rate = (
        seed_load.total / statistics.median(r.seconds for r in seed_runs) if seed_load else None
    )
    rows = []
    result: dict[str, object] = {
        "records_per_form": WORKERS * args.per_worker,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "seed_records_per_second": seed_rate,
        "seed_directory": seed_directory() if seed_load else None,
        "seed_worker_cpu_us_per_record": (
            statistics.median(r.worker_cpu for r in seed_runs) * 1e6 / seed_load.total
            if seed_load
            else None
        ),
        # Cross-run: issue 13's figures, not measured here (see GO_ORIGINAL).
        "go_original_records_per_second": GO_ORIGINAL_RATE,
        "go_original_run_trackerd_records_per_second": GO_RUN_TRACKERD_RATE,
        "redis_hiredis": hiredis,
        "forms": {},
    }
    for form in forms:
        total = loads[form].total
        ours = statistics.median(r.seconds for r in runs[form]["trackerd"])
        form_result = {}
        for name in names:
            seconds = statistics.median(r.seconds for r in runs[form][name])
            cpus = [r.server_cpu for r in runs[form][name] if r.server_cpu is not None]
            cpu_us = statistics.median(cpus) * 1e6 / total if cpus else None
            worker_us = statistics.median(r.worker_cpu for r in runs[form][name]) * 1e6 / total
            total_us = (
                statistics.median((r.server_cpu or 0) + r.worker_cpu for r in runs[form][name])
                * 1e6
                / total
            )
            rows.append(
                [
                    form,
                    name,
                    f"{seconds:.2f}",
                    f"{total / seconds:,.0f}",
                    "-" if name == WORKERS_ALONE else f"{seconds / ours:.2f}x",
                    "-" if cpu_us is None else f"{cpu_us:.2f}",
                    f"{worker_us:.2f}",
                    f"{total_us:.2f}",
                ]
            )
            form_result[name] = {
                "seconds": [r.seconds for r in runs[form][name]],
                "server_cpu_seconds": [r.server_cpu for r in runs[form][name]],
                "worker_cpu_seconds": [r.worker_cpu for r in runs[form][name]],
                "median_seconds": seconds,
                "records_per_second": total / seconds,
                "server_cpu_us_per_record": cpu_us,
                "worker_cpu_us_per_record": worker_us,
                "total_cpu_us_per_record": total_us,
            }
        if seed_rate and seed_load:
            seed_cpu = statistics.median(r.worker_cpu for r in seed_runs) * 1e6 / seed_load.total
            rows.append(
                [
                    form,
                    "seed design, Python model (file per record)",
                    "-",
                    f"{seed_rate:,.0f}",
                    f"{total / ours / seed_rate:.1f}x",
                    "-",
                    f"{seed_cpu:.2f}",
                    f"{seed_cpu:.2f}",
                ]
            )
        rows.append(
            [
                form,
                GO_ORIGINAL,
                "-",
                f"{GO_ORIGINAL_RATE:,}",
                f"{total / ours / GO_ORIGINAL_RATE:.1f}x cross-run "
                f"(in-run: {GO_RUN_TRACKERD_RATE / GO_ORIGINAL_RATE:.1f}x)",
                "-",
                "-",
                "-",
            ]
        )
        result["forms"][form] = form_result  # type: ignore[index]
    print()
    print(f"load average before {load_before}, after {load_after}; hiredis: {hiredis}")
    print(
        table(
            [
                "form",
                "competitor",
                "median s",
                "records/s",
                "trackerd is faster by",
                "server CPU µs/record",
                "workers CPU µs/record",
                "total CPU µs/record",
            ],
            rows,
        )
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out / 'compare.json'}")


if __name__ == "__main__":
    main()
