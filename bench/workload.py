"""bench.compare's workload: every sender form's records, their true counts, and the
forked workers that send them; shared by the benchmarks that reuse that workload.

8 forked workers record 200,000 (connection IP, sender) pairs each: 1.6 million
records with 100,000 distinct connection IPs, once per sender form (see
bench.compare). The workers' strings are made fresh, apart from the ones the true
counts are taken from, so no hash() is cached before timing (as an SMTP worker's
values are new objects).
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path

from trackerd.core.normalise import Category, classify_conn_ip, classify_sender

WORKERS = 8
PER_WORKER = 200_000
CONN_IPS = 100_000
DOMAINS = 45_000
LITERALS = 5_000
FORMS = ("domain", "user@domain", "<user@domain>", "[ip]", "mix")
#: sender(form, r) depends on r modulo these only (keep it true when editing sender());
#: conn_ip(r) on r modulo CONN_IPS. true_counts() needs no more records than that.
SENDER_PERIOD = math.lcm(4, 50, 10, 7, DOMAINS, LITERALS)
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

    def __init__(
        self, form: str, per_worker: int, distinct: tuple[int, int, int] | None = None
    ) -> None:
        """``distinct``: the true counts if known (true_counts(form, per_worker))."""
        self.form = form
        self.per_worker = per_worker
        self.total = WORKERS * per_worker
        # Strings are made per record, as an SMTP server makes them per message,
        # and nothing hashes them before the workers do (a str caches its hash()).
        self.shares = make_shares(form, per_worker)
        self.distinct = true_counts(form, per_worker) if distinct is None else distinct


def make_shares(form: str, per_worker: int) -> list[list[tuple[str, str]]]:
    """Every worker's (connection IP, sender) pairs, as new str objects."""
    return [
        [(conn_ip(r), sender(form, r)) for r in range(w * per_worker, (w + 1) * per_worker)]
        for w in range(WORKERS)
    ]


def true_counts(form: str, per_worker: int) -> tuple[int, int, int]:
    """The distinct counts of a form's records, from strings made apart from the
    workers' (same values)."""
    total = WORKERS * per_worker
    ips = {conn_ip(r) for r in range(min(total, CONN_IPS))}
    senders = {sender(form, r) for r in range(min(total, SENDER_PERIOD))}
    return value_counts(ips, senders)


def distinct_counts(shares: list[list[tuple[str, str]]]) -> tuple[int, int, int]:
    """The distinct counts of these shares' records, taken together."""
    ips = {ip for share in shares for ip, _ in share}
    senders = {s for share in shares for _, s in share}
    return value_counts(ips, senders)


def value_counts(ips: set[str], senders: set[str]) -> tuple[int, int, int]:
    """The distinct (connection IPs, domains, IP literals) these values count as."""
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
    """One timed run: seconds, the server's CPU seconds (None when it has none), the
    workers' CPU seconds, and the project's extension modules the server process had
    loaded (its files; None: not a project daemon) and the workers' parent."""

    def __init__(
        self,
        seconds: float,
        server_cpu: float | None,
        worker_cpu: float,
        server_extensions: list[str] | None = None,
        worker_extensions: list[str] | None = None,
    ) -> None:
        self.seconds = seconds
        self.server_cpu = server_cpu
        self.worker_cpu = worker_cpu
        self.server_extensions = server_extensions
        #: The project's extension modules the workers' parent had loaded (what the
        #: forked workers inherit; None: not noted).
        self.worker_extensions = worker_extensions


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def hashers(salt: bytes) -> tuple[hashlib.blake2b, ...]:
    """Keyed BLAKE2b, one per category (as trackerd's digests), to copy per value."""
    return tuple(hashlib.blake2b(key=salt, digest_size=8, person=b"w-%d" % c) for c in Category)


def digest(hashers: tuple[hashlib.blake2b, ...], category: int, key: bytes) -> bytes:
    h = hashers[category].copy()
    h.update(key)
    return h.digest()
