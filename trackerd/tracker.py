"""The tracker core: the salt, the keyed hash and the three counters. Pure, no I/O.

Values are normalised, then only a keyed BLAKE2b digest of the canonical form
is kept. The salt is made here, handed to the hash objects and dropped: no
attribute holds it, nothing prints it, and a restart makes a new one, so the
counts reset by design.

Normalising costs far more than everything else, and the same raw values come
back again and again (the same servers, the same senders), so results are
cached: the key is Python's hash() of the raw text, SipHash keyed with the
interpreter's own random secret, and the value the digest that is stored anyway.
No cleartext is kept. When that secret is not random (PYTHONHASHSEED set), the
cache stays off, since its keys could then be reversed by trying values.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence

from servertracker.status import Status
from trackerd.distinct_counter import DEFAULT_MAX_EXACT, DistinctCounter
from trackerd.normalise import (
    REJECTED,
    Category,
    Outcome,
    classify_conn_ip,
    classify_domain_part,
    split_sender,
)

SALT_SIZE = 32
#: 64-bit digests: at ten million values per set the chance of any collision is
#: about 3 in a million, and a digest is half the size of a 128-bit one.
DIGEST_SIZE = 8

#: Entries per raw-value cache before it starts again (about 100 bytes each).
RAW_CACHE_ENTRIES = 1 << 17

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
        self._conn_cache: dict[int, bytes | Outcome] = {}
        self._domain_cache: dict[int, tuple[int, bytes] | Outcome] = {}
        self.raw_cache_entries = RAW_CACHE_ENTRIES if hash_is_secret() else 0
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

    def _digest(self, category: int, key: bytes) -> bytes:
        hasher = self._hashers[category].copy()
        hasher.update(key)
        return hasher.digest()

    def _conn_ip_digest(self, value: str) -> bytes | Outcome:
        key = classify_conn_ip(value)
        return self._digest(Category.CONN_IP, key) if type(key) is bytes else key

    def _domain_part_digest(self, part: str) -> tuple[int, bytes] | Outcome:
        classified = classify_domain_part(part)
        if type(classified) is tuple:
            return (classified[0], self._digest(*classified))
        return classified

    def record_pairs(self, pairs: Iterable[Sequence[str | None]]) -> None:
        """Count many pairs: the daemon's hot loop, so it avoids every step it can."""
        conn_cache, domain_cache = self._conn_cache, self._domain_cache
        limit = self.raw_cache_entries
        appends = [counter.pending.append for counter in self.counters]
        conn_append = appends[Category.CONN_IP]
        records = rejected_conn_ips = rejected_senders = 0
        for conn_ip, sender in pairs:
            records += 1
            # A digest is queued for its counter when its cache entry is made; a hit
            # means it was queued already, so a repeated value costs a look-up only.
            if conn_ip:
                cache_key = hash(conn_ip)
                digest = conn_cache.get(cache_key)
                if digest is None:
                    digest = self._conn_ip_digest(conn_ip)
                    if type(digest) is bytes:
                        conn_append(digest)
                    if limit:
                        if len(conn_cache) >= limit:
                            conn_cache.clear()
                        conn_cache[cache_key] = digest
                if digest is REJECTED:
                    rejected_conn_ips += 1
            if sender:
                part = split_sender(sender)
                if type(part) is str:
                    cache_key = hash(part)
                    result = domain_cache.get(cache_key)
                    if result is None:
                        result = self._domain_part_digest(part)
                        if type(result) is tuple:
                            appends[result[0]](result[1])
                        if limit:
                            if len(domain_cache) >= limit:
                                domain_cache.clear()
                            domain_cache[cache_key] = result
                    if result is REJECTED:
                        rejected_senders += 1
                elif part is REJECTED:
                    rejected_senders += 1
        self.records += records
        self.rejected_conn_ips += rejected_conn_ips
        self.rejected_senders += rejected_senders
        for counter in self.counters:
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


def hash_is_secret() -> bool:
    """Whether hash() of a str is keyed with a random secret in this interpreter."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    return bool(sys.flags.hash_randomization) and seed == "random"
