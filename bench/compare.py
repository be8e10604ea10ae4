"""trackerd against what operators would use instead, on one workload, side by side.

Run: ``python -m bench.compare [--rounds 3]`` (needs Debian's redis-server and
the redis package: ``apt-get install redis-server; pip install -e '.[bench]'``).

8 forked workers record 200,000 (connection IP, sender) pairs each: 1.6 million
records with 100,000 distinct connection IPs, 45,000 domains and 5,000 IP
literals. Each competitor is timed from the first fork until its counts confirm
every record. Competitors alternate within each round; medians and ratios are
printed and written to bench/results/compare.json.

- trackerd: the product, workers using servertracker.record_server().
- trackerd --windows none: the same without sliding windows (the 1h and 24h
  windows are on by default), to show what the windows cost.
- redis (a): each worker normalises and computes the keyed hash itself, then one
  SADD per value, in redis-py pipelines of 1,000 commands (how most would write it).
- redis (b): as (a), but one multi-member SADD per category per 1,000 records
  (the best one can do with Redis).
- seed design: in-process salted sets, the whole status JSON rewritten to a file
  on every record (what the Go original does on every RecordServer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._support import BenchDaemon, table
from servertracker import Client
from trackerd.core.normalise import Category, classify_conn_ip, classify_sender

WORKERS = 8
PER_WORKER = 200_000
TOTAL = WORKERS * PER_WORKER
DISTINCT = (100_000, 45_000, 5_000)  # conn IPs, domains, IP literals


def record(r: int) -> tuple[str, str]:
    ip = r % 100_000
    conn_ip = f"10.{ip // 65536}.{ip // 256 % 256}.{ip % 256}"
    if r % 20 == 0:
        literal = (r // 20) % 5_000
        return conn_ip, f"<postmaster@[192.0.{literal // 256}.{literal % 256}]>"
    domain = (r - r // 20 - 1) % 45_000  # the how-many-th domain record this is
    return conn_ip, f"<user{r % 7}@mail{domain}.example.com>"


def fork_workers(work: Callable[[int], bool]) -> None:
    """Run work(w) in WORKERS forked processes; raise if any fails."""
    pids = []
    for w in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if work(w) else 1
            finally:
                os._exit(code)
        pids.append(pid)
    failed = [pid for pid in pids if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} workers failed")


class Workload:
    def __init__(self) -> None:
        self.shares = [
            [record(r) for r in range(w * PER_WORKER, (w + 1) * PER_WORKER)] for w in range(WORKERS)
        ]


# --- trackerd -----------------------------------------------------------------------


def run_trackerd(load: Workload, extra_args: tuple[str, ...] = ()) -> float:
    daemon = BenchDaemon(extra_args).start()
    try:
        start = time.perf_counter()

        def work(w: int) -> bool:
            client = Client(daemon.socket_path, max_buffered=PER_WORKER + 1)
            record_server = client.record_server
            for conn_ip, sender in load.shares[w]:
                record_server(conn_ip, sender)
            return client.flush(600) and client.stats().dropped == 0

        fork_workers(work)
        while (status := daemon.status()).records < TOTAL:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        got = (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers)
        assert got == DISTINCT, f"trackerd counted {got}"
        return elapsed
    finally:
        daemon.stop()


# --- Redis --------------------------------------------------------------------------

SET_NAMES = ("conn_ips", "domains", "ip_servers")


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


def run_redis(load: Workload, multi_member: bool) -> float:
    import redis  # a benchmark-only dependency

    server = RedisServer()
    salt = secrets.token_bytes(32)
    try:
        start = time.perf_counter()

        def work(w: int) -> bool:
            db = redis.Redis(unix_socket_path=str(server.socket))
            hashers = _hashers(salt)
            pipe = db.pipeline(transaction=False)
            pending: list[list[bytes]] = [[], [], []]
            commands = 0
            for n, (conn_ip, sender) in enumerate(load.shares[w], 1):
                values = []
                ip = classify_conn_ip(conn_ip)
                if type(ip) is bytes:
                    values.append((Category.CONN_IP, ip))
                classified = classify_sender(sender)
                if type(classified) is tuple:
                    values.append(classified)
                for category, key in values:
                    digest = _digest(hashers, category, key)
                    if multi_member:
                        pending[category].append(digest)
                    else:
                        pipe.sadd(SET_NAMES[category], digest)
                        commands += 1
                        if commands == 1000:
                            pipe.execute()
                            commands = 0
                if multi_member and n % 1000 == 0:
                    for category, members in enumerate(pending):
                        if members:
                            pipe.sadd(SET_NAMES[category], *members)
                            members.clear()
                    pipe.execute()
            for category, members in enumerate(pending):
                if members:
                    pipe.sadd(SET_NAMES[category], *members)
            pipe.execute()
            return True

        fork_workers(work)
        db = redis.Redis(unix_socket_path=str(server.socket))
        got = tuple(db.scard(name) for name in SET_NAMES)
        elapsed = time.perf_counter() - start
        assert got == DISTINCT, f"redis counted {got}"
        return elapsed
    finally:
        server.stop()


# --- the seed's design ----------------------------------------------------------------


def run_seed_design(load: Workload) -> float:
    """In-process sets, and the status file rewritten on every record, as the original."""
    directory = Path(tempfile.mkdtemp(prefix="stbs-", dir="/tmp"))
    salt = secrets.token_bytes(32)
    try:
        start = time.perf_counter()

        def work(w: int) -> bool:
            hashers = _hashers(salt)
            sets: list[set[bytes]] = [set(), set(), set()]
            path = directory / f"server_tracker-{w}.json"
            boot = int(time.time())
            for conn_ip, sender in load.shares[w]:
                ip = classify_conn_ip(conn_ip)
                if type(ip) is bytes:
                    sets[Category.CONN_IP].add(_digest(hashers, Category.CONN_IP, ip))
                classified = classify_sender(sender)
                if type(classified) is tuple:
                    sets[classified[0]].add(_digest(hashers, *classified))
                status = {
                    "boot_time": boot,
                    "unique_conn_ips": len(sets[0]),
                    "unique_domains": len(sets[1]),
                    "unique_ip_servers": len(sets[2]),
                }
                path.write_text(json.dumps(status))
            return True

        fork_workers(work)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- the run --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="trackerd against Redis and the seed's design")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-seed", action="store_true", help="leave out the slow seed design")
    parser.add_argument("--only", help="run only competitors whose name contains this")
    args = parser.parse_args()

    load = Workload()
    competitors: dict[str, Callable[[], float]] = {
        "trackerd": lambda: run_trackerd(load),
        "trackerd --windows none": lambda: run_trackerd(load, ("--windows", "none")),
    }
    if shutil.which("redis-server"):
        competitors["redis (a) SADD per value"] = lambda: run_redis(load, multi_member=False)
        competitors["redis (b) multi-member SADD"] = lambda: run_redis(load, multi_member=True)
    else:
        print("redis-server not found (apt-get install redis-server): Redis left out")
    if not args.skip_seed:
        competitors["seed design (file per record)"] = lambda: run_seed_design(load)

    if args.only:
        competitors = {n: c for n, c in competitors.items() if args.only in n or n == "trackerd"}
    times: dict[str, list[float]] = {name: [] for name in competitors}
    for round_number in range(args.rounds):
        for name, run in competitors.items():
            seconds = run()
            times[name].append(seconds)
            print(f"round {round_number + 1}: {name}: {seconds:.2f} s", flush=True)

    medians = {name: statistics.median(t) for name, t in times.items()}
    ours = medians["trackerd"]
    rows = [
        [name, f"{m:.2f}", f"{TOTAL / m:,.0f}", f"{m / ours:.2f}x"] for name, m in medians.items()
    ]
    print()
    print(
        table(["1.6M records, 8 workers", "median s", "records/s", "trackerd is faster by"], rows)
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    result = {
        "records": TOTAL,
        "distinct": DISTINCT,
        "rounds": args.rounds,
        "seconds": times,
        "median_seconds": medians,
        "speedup_of_trackerd": {name: m / ours for name, m in medians.items()},
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out / 'compare.json'}")


if __name__ == "__main__":
    main()
