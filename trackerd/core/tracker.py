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

Sliding windows (windows.py) need to know when each value was last seen, cache
hits included. The digests of a batch go into a set per column (one C call
each); once a second, when the clock moves to the next second, the set is handed
to the counters with that second's stamp. So a value repeated a thousand times
in a second costs a set look-up each time and the counters' work once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from servertracker.status import Status, WindowCounts
from trackerd.core.distinct_counter import DEFAULT_MAX_EXACT, DistinctCounter
from trackerd.core.normalise import (
    IGNORED,
    REJECTED,
    Category,
    Outcome,
    classify_conn_ip,
    classify_domain_part,
    positions,
    split_senders,
)
from trackerd.core.windows import Window, cutoff_stamp

SALT_SIZE = 32
#: 64-bit digests: at ten million values per set the chance of any collision is
#: about 3 in a million, and a digest is half the size of a 128-bit one.
DIGEST_SIZE = 8

#: Entries per raw-value cache before it starts again (about 100 bytes each).
RAW_CACHE_ENTRIES = 1 << 17

#: Distinct digests gathered within one second before they are handed to the
#: counters anyway (bounds the sets' memory to a few MiB).
MAX_TOUCHED = 1 << 16

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
        windows: Sequence[Window] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``salt`` exists for tests of the core; the daemon never passes one.

        ``monotonic`` is the windows' clock: a wall clock set back or forward must
        not age values out early or late.
        """
        key = secrets.token_bytes(SALT_SIZE) if salt is None else salt
        # One pre-keyed hasher per category, copied per value: the key block is
        # processed once, and a value can never match across categories.
        self._hashers = tuple(
            hashlib.blake2b(key=key, digest_size=DIGEST_SIZE, person=b"trackerd-%d" % category)
            for category in Category
        )
        del key
        self.counters = tuple(
            DistinctCounter(STATUS_FIELDS[category], max_exact, windowed=bool(windows))
            for category in Category
        )
        self.windows = tuple(windows)
        self._monotonic = monotonic
        self._started = monotonic()
        self._second = 0  # whole seconds since start of what the touched sets hold
        self._touched_conn: set[bytes | Outcome | None] = set()
        self._touched_parts: set[tuple[int, bytes] | Outcome] = set()
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

    # The two cache misses: normalise, hash, queue the digest for its counter, and
    # remember the result. Queueing and caching happen together, so a cache hit
    # always means the digest is queued already. Each looks in the cache once more
    # first: a batch looks all its values up before handling its misses, so a new
    # value that comes twice in one batch misses twice, and only the first is new.

    def _conn_ip_miss(self, value: str, cache_key: int) -> bytes | Outcome:
        known = self._conn_cache.get(cache_key)
        if known is not None:
            return known
        key = classify_conn_ip(value)
        result = key
        if type(key) is bytes:
            result = self._digest(Category.CONN_IP, key)
            self.counters[Category.CONN_IP].pending.append(result)
        self._remember(self._conn_cache, cache_key, result)
        return result

    def _domain_part_miss(self, part: str, cache_key: int) -> tuple[int, bytes] | Outcome:
        known = self._domain_cache.get(cache_key)
        if known is not None:
            return known
        classified = classify_domain_part(part)
        result: tuple[int, bytes] | Outcome = classified
        if type(classified) is tuple:
            category, key = classified
            result = (category, self._digest(category, key))
            self.counters[category].pending.append(result[1])
        self._remember(self._domain_cache, cache_key, result)
        return result

    def _remember(self, cache: dict[int, Any], cache_key: int, result: object) -> None:
        if self.raw_cache_entries:
            if len(cache) >= self.raw_cache_entries:
                cache.clear()  # start again: simpler and cheaper than evicting one by one
            cache[cache_key] = result

    def record_pairs(self, pairs: Iterable[Sequence[str | None]]) -> None:
        """Count many pairs: the daemon's hot loop.

        It goes a column at a time, so that the per-value steps run in C (map,
        hash, dict.get, list.index, list.count; one regular-expression pass splits
        the usual senders), and Python code runs only for cache misses. A repeated
        value costs a hash and a look-up: its digest is queued already.
        """
        batch = pairs if type(pairs) is list else list(pairs)
        if not batch:
            return
        conn_ips, senders = zip(*batch, strict=True)
        conn_cache, domain_cache = self._conn_cache, self._domain_cache
        conn_results = list(map(conn_cache.get, map(hash, conn_ips)))
        for index in positions(conn_results, None):
            value = conn_ips[index]
            conn_results[index] = self._conn_ip_miss(value, hash(value))
        parts = split_senders(senders)
        sender_results: list[Any] = list(map(domain_cache.get, map(hash, parts)))
        for outcome in (IGNORED, REJECTED):  # decided already, whatever the cache says
            for index in positions(parts, outcome):
                sender_results[index] = outcome
        for index in positions(sender_results, None):
            part = cast(str, parts[index])
            sender_results[index] = self._domain_part_miss(part, hash(part))
        if self.windows:
            second = int(self._monotonic() - self._started)
            touched_conn, touched_parts = self._touched_conn, self._touched_parts
            if second != self._second or len(touched_conn) + len(touched_parts) > MAX_TOUCHED:
                self._hand_over_touched()
                self._second = second
            touched_conn.update(conn_results)
            touched_parts.update(sender_results)
        self.records += len(batch)
        self.rejected_conn_ips += conn_results.count(REJECTED)
        self.rejected_senders += sender_results.count(REJECTED)
        for counter in self.counters:
            counter.flush_if_full()

    def _hand_over_touched(self) -> None:
        """Give the counters what was seen in the current second, with its stamp."""
        stamp = self._second + 1
        conn, parts = self._touched_conn, self._touched_parts
        conn.discard(IGNORED)
        conn.discard(REJECTED)
        parts.discard(IGNORED)
        parts.discard(REJECTED)
        by_category: list[list[bytes]] = [[] for _ in Category]
        by_category[Category.CONN_IP] = cast(list[bytes], list(conn))
        for category, digest in cast(set[tuple[int, bytes]], parts):
            by_category[category].append(digest)
        conn.clear()
        parts.clear()
        for counter, digests in zip(self.counters, by_category, strict=True):
            counter.touch(digests, stamp)

    def window_counts(self) -> tuple[WindowCounts, ...]:
        """Each window's distinct counts, as of now."""
        if not self.windows:
            return ()
        self._hand_over_touched()
        now_stamp = int(self._monotonic() - self._started) + 1
        result = []
        for window in self.windows:
            since = cutoff_stamp(now_stamp, window)
            counts = [counter.count_since(since) for counter in self.counters]
            result.append(
                WindowCounts(
                    window=window.name,
                    seconds=window.seconds,
                    unique_conn_ips=counts[Category.CONN_IP],
                    unique_domains=counts[Category.DOMAIN],
                    unique_ip_servers=counts[Category.IP_SERVER],
                )
            )
        return tuple(result)

    def status(self) -> Status:
        counts = [counter.count() for counter in self.counters]
        windows = self.window_counts()
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
            windows=windows,
        )


def hash_is_secret() -> bool:
    """Whether hash() of a str is keyed with a random secret in this interpreter."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    return bool(sys.flags.hash_randomization) and seed == "random"
