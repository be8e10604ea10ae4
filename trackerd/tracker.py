"""The tracker core: the salt, the keyed hash and the three counters. Pure, no I/O.

Values are normalised, then only a keyed BLAKE2b digest of the canonical form
is kept. The salt is made here, handed to the hash objects and dropped: no
attribute holds it, nothing prints it, and a restart makes a new one, so the
counts reset by design.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

from servertracker.status import Status
from trackerd.distinct_counter import DEFAULT_MAX_EXACT, DistinctCounter
from trackerd.normalise import REJECTED, Category, classify_conn_ip, classify_sender

SALT_SIZE = 32
#: 64-bit digests: at ten million values per set the chance of any collision is
#: about 3 in a million, and a digest is half the size of a 128-bit one.
DIGEST_SIZE = 8

#: The Status field that reports each category.
STATUS_FIELDS = {
    Category.CONN_IP: "unique_conn_ips",
    Category.DOMAIN: "unique_domains",
    Category.IP_SERVER: "unique_ip_servers",
}


class Tracker:
    """Keyed-hash counters of connection IPs, sender domains and sender IP literals."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        salt: bytes | None = None,
        max_exact: int = DEFAULT_MAX_EXACT,
    ) -> None:
        """``salt`` exists for tests of the core; the daemon never passes one."""
        key = secrets.token_bytes(SALT_SIZE) if salt is None else salt
        # One pre-keyed hasher per category, copied per value: the key block is
        # processed once, and a value can never match across categories.
        self._hashers = tuple(
            hashlib.blake2b(key=key, digest_size=DIGEST_SIZE, person=b"trackerd-%d" % category)
            for category in Category
        )
        del key
        self.counters = tuple(
            DistinctCounter(STATUS_FIELDS[category], max_exact) for category in Category
        )
        self._clock = clock
        self.boot_time = int(clock())
        self.records = 0
        self.rejected_conn_ips = 0
        self.rejected_senders = 0

    def __repr__(self) -> str:
        return f"<Tracker records={self.records}>"

    def record_server(self, conn_ip: str | None, sender: str | None) -> None:
        """Count one (connection IP, sender) pair; never raises for any str or None."""
        self.record_pairs(((conn_ip, sender),))

    def record_pairs(self, pairs: Iterable[Sequence[str | None]]) -> None:
        """Count many pairs. Each distinct canonical value of the batch is hashed once."""
        conn_ips: set[bytes] = set()
        by_category: tuple[set[bytes], set[bytes], set[bytes]] = (conn_ips, set(), set())
        records = rejected_conn_ips = rejected_senders = 0
        for conn_ip, sender in pairs:
            records += 1
            if conn_ip:
                ip = classify_conn_ip(conn_ip)
                if type(ip) is bytes:
                    conn_ips.add(ip)
                elif ip is REJECTED:
                    rejected_conn_ips += 1
            if sender:
                classified = classify_sender(sender)
                if type(classified) is tuple:
                    by_category[classified[0]].add(classified[1])
                elif classified is REJECTED:
                    rejected_senders += 1
        self.records += records
        self.rejected_conn_ips += rejected_conn_ips
        self.rejected_senders += rejected_senders
        for hasher, counter, keys in zip(self._hashers, self.counters, by_category, strict=True):
            if not keys:
                continue
            append = counter.pending.append
            copy = hasher.copy
            for key in keys:
                h = copy()
                h.update(key)
                append(h.digest())
            counter.flush_if_full()

    def status(self) -> Status:
        counts = [counter.count() for counter in self.counters]
        return Status(
            boot_time=self.boot_time,
            unique_conn_ips=counts[Category.CONN_IP],
            unique_domains=counts[Category.DOMAIN],
            unique_ip_servers=counts[Category.IP_SERVER],
            updated_time=self._clock(),
            records=self.records,
            rejected_conn_ips=self.rejected_conn_ips,
            rejected_senders=self.rejected_senders,
            estimated=tuple(c.name for c in self.counters if c.estimated),
        )
