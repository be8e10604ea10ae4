"""The seed's design as bench.compare's competitor: a Python model of the Go original
(in-process salted sets, the status file rewritten on every record).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from bench.workload import (
    Run,
    Workload,
    digest,
    distinct_counts,
    fork_workers,
    hashers,
    make_shares,
)
from trackerd.core.normalise import Category, classify_conn_ip, classify_sender


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
            keyed = hashers(salt)
            sets: list[set[bytes]] = [set(), set(), set()]
            boot = int(time.time())
            for ip, value in load.shares[w]:
                key = classify_conn_ip(ip)
                if type(key) is bytes:
                    sets[Category.CONN_IP].add(digest(keyed, Category.CONN_IP, key))
                classified = classify_sender(value)
                if type(classified) is tuple:
                    sets[classified[0]].add(digest(keyed, *classified))
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
