"""The tracker core: the salt, the keyed hash and the three counters. Pure, no I/O.

Values are normalised, then only a keyed BLAKE2b digest of the canonical form
is kept. The salt is made here, handed to the hash objects and dropped: no
attribute holds it, nothing prints it, and a restart makes a new one, so the
counts reset by design.

Normalising costs far more than everything else, and the same raw values come
back again and again (the same servers, the same senders), so results are
cached (raw_cache.py): the key is Python's hash() of the raw text, SipHash keyed
with the interpreter's own random secret, and the entry says only whether the
value was counted, rejected or ignored. No cleartext is kept. When that secret is
not random (PYTHONHASHSEED set), the caches stay off, since their keys could then
be reversed by trying values.

Sliding windows (windows.py) need to know when each value was last seen, cache
hits included. Time is cut into periods (1/60 of the shortest window, 1 s to
60 s), and the raw-value caches start empty at each period: so the first
sighting of a value in a period is a cache miss, which queues its digest, and
the counter stamps what it adds with the period's end; later sightings in the
same period are hits and need nothing. A hit costs no more than without windows;
each distinct value costs one more miss per period.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice, repeat
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from servertracker.hash_keys import hash_is_secret
from servertracker.sender_split import Outcome, positions, split_sender, split_senders
from servertracker.status import Status, WindowCounts
from trackerd.core.definition_cache import DefinitionCache
from trackerd.core.distinct_counter import DEFAULT_MAX_EXACT, DistinctCounter
from trackerd.core.fleet_sketch import FleetSketch
from trackerd.core.interned import InternedCounting
from trackerd.core.keyed_hash import C_CHUNK, CONN_IPS, SENDERS, UNSURE, new_keyed_hash
from trackerd.core.normalise import (
    Category,
    classify_conn_ip,
    classify_domain_part,
    ipv4_keys,
    plain_domains,
)
from trackerd.core.raw_cache import (
    COUNTED,
    IGNORED,
    MISS,
    Codes,
    CRawCache,
    Keys,
    RawCache,
    new_raw_cache,
)
from trackerd.core.raw_cache import REJECTED as CODE_REJECTED
from trackerd.core.windows import Window, cutoff_stamp, period_of

if TYPE_CHECKING:
    from trackerd.core._ccolumns import Columns

SALT_SIZE = 32
#: 64-bit digests: at ten million values per set the chance of any collision is
#: about 3 in a million, and a digest is half the size of a 128-bit one.
DIGEST_SIZE = 8

#: Slots of the connection IPs' raw-value cache (8 bytes each: 4 MiB); a value
#: is forgotten when four others share its row, so about a quarter as many
#: distinct values stay cached without loss.
RAW_CACHE_SLOTS = 1 << 19
#: The cache of raw senders has more: whole MAIL FROM addresses are many more
#: than their domains (users times domains). 8 MiB.
SENDER_CACHE_FACTOR = 2
#: Entries of the domain-part cache (a dict, about 100 bytes each, looked up only
#: for raw senders not cached) before it starts again.
RAW_CACHE_ENTRIES = 1 << 17

#: Batches of at most this many pairs are counted a pair at a time (no arrays).
FEW_PAIRS = 4

#: New values handled at a time: connection IPs normalised (a few µs each at
#: most), and under a deadline (record_columns) raw senders split and their plain
#: domain parts decided; about 0.1-0.5 ms. Any other domain part is normalised
#: alone, the clock checked after each.
SPLIT_CHUNK = 256

#: The raw-value caches' code for each outcome.
_CODES: dict[Outcome, int] = {Outcome.REJECTED: CODE_REJECTED, Outcome.IGNORED: IGNORED}
#: The raw-value caches' code for each of keyed_hash.classify()'s codes (UNSURE: MISS).
_C_CODES = (MISS, COUNTED, COUNTED, COUNTED, CODE_REJECTED, IGNORED)
_C_CODES_TABLE = bytes(_C_CODES).ljust(256, b"\0")
#: classify()'s UNSURE, as a byte of its codes.
_UNSURE_BYTE = bytes([UNSURE])

#: The Status field that reports each category.
STATUS_FIELDS = {
    Category.CONN_IP: "unique_conn_ips",
    Category.DOMAIN: "unique_domains",
    Category.IP_SERVER: "unique_ip_servers",
}


class Tracker(InternedCounting):
    """Keyed-hash counters of connection IPs, sender domains and sender IP literals.

    Counts `record` and `columns` messages here, `interned` ones in interned.py."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        salt: bytes | None = None,
        max_exact: int = DEFAULT_MAX_EXACT,
        windows: Sequence[Window] = (),
        monotonic: Callable[[], float] = time.monotonic,
        fleet: FleetSketch | None = None,
        raw_cache_slots: int = RAW_CACHE_SLOTS,
        c_first_sightings: bool = True,
    ) -> None:
        """``salt`` exists for tests of the core; the daemon never passes one.
        ``fleet``, when given, is fed each canonical value on a cache miss.
        ``monotonic`` is the windows' clock: a wall clock set back or forward must
        not age values out early or late. ``c_first_sightings=False`` keeps the
        first sightings in Python although the C extension runs (for tests).
        """
        key = secrets.token_bytes(SALT_SIZE) if salt is None else salt
        # The keyed hash (keyed_hash.py): in C where built, else hashlib.
        self._hash = new_keyed_hash(key, DIGEST_SIZE, c=c_first_sightings)
        del key
        # First sightings of the common forms decided in C, where built; not in
        # fleet mode, which needs each canonical value (fleet_sketch.py).
        self._first = self._hash.first_sightings if fleet is None else None
        self.counters = tuple(
            DistinctCounter(STATUS_FIELDS[category], max_exact, windowed=bool(windows))
            for category in Category
        )
        self.windows = tuple(windows)
        self._monotonic = monotonic
        self._started = monotonic()
        self._period = period_of(self.windows)
        self._slot = 0  # the current period: whole seconds since start // period
        self._window_cache: tuple[tuple[int, int], tuple[WindowCounts, ...]] | None = None
        self._conn_cache = new_raw_cache(raw_cache_slots)
        self._domain_cache: dict[int, tuple[int, bytes] | Outcome] = {}
        # Keyed by the raw sender, before the split: what a repeated sender costs.
        # In C (raw_cache.py's CRawCache), a usual sender is keyed by its domain part.
        self._sender_cache = new_raw_cache(raw_cache_slots * SENDER_CACHE_FACTOR, split=True)
        # interned.py's definition caches, per column: hash(raw) -> what it came to.
        self._defined = (
            DefinitionCache(fleet=fleet is not None),
            DefinitionCache(fleet=fleet is not None),
        )
        #: Every raw-value cache: a new fleet epoch clears them all (roll_fleet_epoch).
        self._caches = (self._conn_cache, self._domain_cache, self._sender_cache, *self._defined)
        #: The domain-part cache's bound; 0 turns every raw-value cache off.
        self.raw_cache_entries = RAW_CACHE_ENTRIES if hash_is_secret() else 0
        self.fleet = fleet
        self._clock = clock
        self.boot_time = int(clock())
        self.records = 0
        self.rejected_conn_ips = 0
        self.rejected_senders = 0

    def __repr__(self) -> str:
        return f"<Tracker records={self.records}>"

    def record_server(self, conn_ip: str | None, sender: str | None) -> None:
        """Count one (connection IP, sender) pair; never raises for any str or None."""
        self.record_columns((conn_ip,), (sender,))

    def _digest(self, category: int, key: bytes) -> bytes:
        return self._hash.digest(category, key)

    def _queue(self, category: int, keys: list[bytes]) -> list[bytes]:
        """The keyed digests of canonical keys of one category, queued for its
        counter (and each key fed to the fleet sketch)."""
        digests = self._hash.digests(category, keys)
        self.counters[category].pending.extend(digests)
        if self.fleet is not None:
            for key in keys:
                self.fleet.add(category, key)
        return digests

    # First sightings: normalise, hash, and queue the digest for its counter. The
    # caller remembers the outcome after queueing, so a cache hit always means the
    # digest is queued already. One value at a time (_conn_ip_miss,
    # _domain_part_miss: a Postfix policy request's pair) or a batch at a time
    # (_conn_ips_seen, _domain_parts_seen); both give the same results.

    def _classified_in_c(self, column: int, values: Sequence[str | None]) -> tuple[bytes, bytes]:
        """keyed_hash's classify() of values (only where self._first): the counted
        ones' digests queued; each value's code (UNSURE: normalise.py decides) and
        digest returned."""
        assert self._first is not None
        codes, digests, queued = self._first.classify(column, values)
        for counter, some in zip(self.counters, queued, strict=True):
            if some:
                counter.queue_chunk(some)
        return codes, digests

    def _misses_in_c_then(
        self,
        in_python: Callable[
            [Sequence[str | None], Keys, Codes, npt.NDArray[np.intp], float | None], int
        ],
        column: int,
        cache: RawCache | CRawCache,
        values: Sequence[str | None],
        keys: Keys,
        codes: Codes,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
    ) -> int:
        """The misses C is sure of decided in C (where it decides first sightings),
        the rest by in_python (normalise.py); how many pairs are done."""
        if self._first is None:
            return in_python(values, keys, codes, misses, deadline)
        misses, limit = self._misses_in_c(column, cache, values, keys, codes, misses, deadline)
        if misses.size:
            limit = min(limit, in_python(values, keys, codes, misses, deadline))
        return limit

    def _misses_in_c(
        self,
        column: int,
        cache: RawCache | CRawCache,
        values: Sequence[str | None],
        keys: Keys,
        codes: Codes,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
    ) -> tuple[npt.NDArray[np.intp], int]:
        """Decide in C the misses it is sure of, C_CHUNK at a time, the clock checked
        after each chunk: their codes filled in, digests queued, outcomes remembered.
        Returns the misses before the limit that normalise.py must decide, and the
        limit: how many pairs, from the first, are done once those are."""
        limit = len(codes)
        unsure = []
        for start in range(0, misses.size, C_CHUNK):
            chunk = misses[start : start + C_CHUNK]
            classified, _ = self._classified_in_c(column, [values[at] for at in chunk.tolist()])
            # The raw-value caches' codes, by bytes.translate(): one C pass, no array.
            found = np.frombuffer(classified.translate(_C_CODES_TABLE), dtype=np.int8)
            codes[chunk] = found
            if _UNSURE_BYTE not in classified:  # the usual chunk: C decided every value
                if self.raw_cache_entries:
                    cache.remember(keys[chunk], found)
            else:
                sure = found != MISS
                if self.raw_cache_entries:
                    cache.remember(keys[chunk[sure]], found[sure])
                unsure.append(chunk[~sure])
            more = start + C_CHUNK < misses.size
            if more and deadline is not None and time.perf_counter() > deadline:
                limit = int(misses[start + C_CHUNK])
                break
        return np.concatenate(unsure) if unsure else misses[:0], limit

    def _conn_ip_miss(self, value: str | None) -> int:
        """Normalise a connection IP not cached; its outcome code (raw_cache.py)."""
        if self._first is not None:
            code = self._classified_in_c(CONN_IPS, (value,))[0][0]
            if code != UNSURE:
                return _C_CODES[code]
        key = classify_conn_ip(value)
        if type(key) is bytes:
            self.counters[Category.CONN_IP].pending.append(self._digest(Category.CONN_IP, key))
            if self.fleet is not None:
                self.fleet.add(Category.CONN_IP, key)
            return COUNTED
        return _CODES[cast(Outcome, key)]

    def _domain_part_miss(self, part: str, cache_key: int) -> tuple[int, bytes] | Outcome:
        # Looks in the cache once more first: a batch looks all its values up before
        # handling its misses, so a new part that comes twice in one batch misses
        # twice, and only the first is new.
        known = self._domain_cache.get(cache_key)
        if known is not None:
            return known
        result = self._domain_part_seen(part)
        if self.raw_cache_entries:
            if len(self._domain_cache) >= self.raw_cache_entries:
                self._domain_cache.clear()  # start again: simpler than evicting one by one
            self._domain_cache[cache_key] = result
        return result

    def _conn_ips_seen(self, values: Sequence[str | None]) -> list[bytes | Outcome]:
        """_conn_ip_miss() for a batch of values, none cached: each one's digest
        (queued, and fed to the fleet sketch) or its Outcome. Each value costs at
        most a few µs (classify_conn_ip() checks the length first), so a chunk of
        SPLIT_CHUNK needs no deadline of its own."""
        plain = ipv4_keys(values)  # the usual batch: dotted quads, one map() in C
        if plain is not None:
            return cast("list[bytes | Outcome]", self._queue(Category.CONN_IP, plain))
        classified = list(map(classify_conn_ip, values))
        keys = [key for key in classified if type(key) is bytes]
        digests = self._queue(Category.CONN_IP, keys)
        if len(keys) == len(classified):
            return cast("list[bytes | Outcome]", digests)
        counted = iter(digests)
        return [next(counted) if type(key) is bytes else key for key in classified]

    def _domain_parts_seen(
        self, parts: Sequence[str], deadline: float | None = None
    ) -> list[tuple[int, bytes] | Outcome]:
        """_domain_part_miss() for a batch of distinct domain parts not in the
        domain-part cache: each one's (category, digest), queued, or its Outcome;
        the cache is not touched (the caller enters them).

        Plain host names (plain_domains()) are decided in one pass over the batch;
        every other part by classify_domain_part(), one at a time, the clock
        checked after each: with a ``deadline``, only a prefix of the parts is
        done (at least one), up to the part during which it passed, and nothing
        after it is queued.
        """
        keys = plain_domains(parts)
        if b"" not in keys:  # the usual batch
            return list(zip(repeat(Category.DOMAIN), self._queue(Category.DOMAIN, keys)))
        results: list[tuple[int, bytes] | Outcome | None] = [None] * len(keys)
        done = len(keys)
        others = keys.count(b"")
        for at in range(done) if others == done else positions(keys, b""):
            results[at] = self._domain_part_seen(parts[at])
            if deadline is not None and time.perf_counter() > deadline:
                done = at + 1
                break
        if others < len(keys):  # the plain ones done, hashed together, put in their places
            digests = iter(self._queue(Category.DOMAIN, [key for key in keys[:done] if key]))
            return [
                (Category.DOMAIN, next(digests)) if key else result  # type: ignore[misc]
                for key, result in zip(keys[:done], results, strict=False)
            ]
        return results[:done]  # type: ignore[return-value]

    def _domain_part_seen(self, part: str) -> tuple[int, bytes] | Outcome:
        """A domain part's (category, digest), queued, or its Outcome: the exact path."""
        classified = classify_domain_part(part)
        if type(classified) is not tuple:
            return cast(Outcome, classified)
        category, key = classified
        digest = self._digest(category, key)
        self.counters[category].pending.append(digest)
        if self.fleet is not None:
            self.fleet.add(category, key)
        return (category, digest)

    def record_pairs(self, pairs: Iterable[Sequence[str | None]]) -> None:
        """Count many pairs: record_columns() of their two columns."""
        batch = pairs if type(pairs) is list else list(pairs)
        if batch:
            conn_ips, senders = zip(*batch, strict=True)
            self.record_columns(conn_ips, senders)

    def record_columns(
        self,
        conn_ips: Sequence[str | None],
        senders: Sequence[str | None],
        deadline: float | None = None,
    ) -> int:
        """Count the pairs (conn_ips[i], senders[i]): the daemon's hot loop.

        It goes a column at a time, so that the per-value steps run in C (map,
        hash, dict.get, list.index, list.count), and Python code runs only for
        cache misses. A sender is looked up by its raw text first, so a repeated
        sender costs a hash and a look-up whatever its form; only a new raw text
        is split, and its domain part looked up in turn.

        With a ``deadline`` (a time.perf_counter() value), it stops after the
        cache misses during which the deadline passed (a chunk of SPLIT_CHUNK
        cheap ones, or one costly domain part), and counts only the pairs whose
        values are known by then: the return value is how many pairs, from the
        first, were counted (at least one; all of them without a deadline). The
        caller goes on from there. Only misses cost time, so only they check the
        clock; a value normalised for a pair not yet counted is cached, and a hit
        later.
        """
        if len(conn_ips) != len(senders):
            raise ValueError("columns of unequal length")
        if not conn_ips:
            return 0
        if self.windows:
            self._follow_the_clock()
        if len(conn_ips) <= FEW_PAIRS:
            return self._record_few(conn_ips, senders, deadline)
        conn_keys, conn_codes = self._look_up(self._conn_cache, conn_ips)
        sender_keys, sender_codes = self._look_up(self._sender_cache, senders)
        return self._count_looked_up(
            conn_ips, senders, conn_keys, conn_codes, sender_keys, sender_codes, deadline
        )

    @property
    def scans_columns(self) -> bool:
        """Whether record_scanned() runs: the C caches are on (raw_cache.py)."""
        return bool(self.raw_cache_entries) and isinstance(self._conn_cache, CRawCache)

    def record_scanned(
        self, columns: Columns, start: int, stop: int, deadline: float | None = None
    ) -> int:
        """record_columns() of the pairs start to stop of a columns message read in
        place by the C extension (raw_cache.scan_columns(); only when scans_columns):
        the look-ups hash the values where they lie in the message's bytes, and only
        the misses become str objects, for the same Python code as record_columns().
        Returns how many pairs from start were counted, as record_columns()."""
        if start >= stop:
            return 0
        assert isinstance(self._conn_cache, CRawCache)
        assert isinstance(self._sender_cache, CRawCache)
        if self.windows:
            self._follow_the_clock()  # before the look-ups: it may empty the caches
        conn_keys, conn_codes, conn_ips = self._conn_cache.look_up_columns(columns, 0, start, stop)
        sender_keys, sender_codes, senders = self._sender_cache.look_up_columns(
            columns, 1, start, stop
        )
        return self._count_looked_up(
            conn_ips, senders, conn_keys, conn_codes, sender_keys, sender_codes, deadline
        )

    def _count_looked_up(
        self,
        conn_ips: Sequence[str | None],
        senders: Sequence[str | None],
        conn_keys: Keys,
        conn_codes: Codes,
        sender_keys: Keys,
        sender_codes: Codes,
        deadline: float | None,
    ) -> int:
        """Count pairs whose values were looked up: the misses first (normalised,
        queued, remembered), then the tallies. The values are read at the misses only.
        Returns how many pairs, from the first, were counted (see record_columns)."""
        limit = len(conn_ips)
        misses = np.flatnonzero(conn_codes == MISS)
        if misses.size:
            limit = self._conn_misses(conn_ips, conn_keys, conn_codes, misses, deadline)
            if limit < len(conn_ips):
                senders = senders[:limit]
                sender_keys, sender_codes = sender_keys[:limit], sender_codes[:limit]
        misses = np.flatnonzero(sender_codes == MISS)
        if misses.size:
            limit = self._sender_misses(senders, sender_keys, sender_codes, misses, deadline)
        self.records += limit
        self.rejected_conn_ips += int(np.count_nonzero(conn_codes[:limit] == CODE_REJECTED))
        self.rejected_senders += int(np.count_nonzero(sender_codes[:limit] == CODE_REJECTED))
        for counter in self.counters:
            counter.flush_if_full()
        return limit

    def _record_few(
        self, conn_ips: Sequence[str | None], senders: Sequence[str | None], deadline: float | None
    ) -> int:
        """record_columns() a pair at a time: a few pairs (one Postfix policy request,
        say) cost less without arrays."""
        cached = bool(self.raw_cache_entries)
        conn_cache, sender_cache = self._conn_cache, self._sender_cache
        done = rejected_conn_ips = rejected_senders = 0
        conn_key, sender_key = conn_cache.key, sender_cache.key
        for conn_ip, sender in zip(conn_ips, senders, strict=True):
            key = conn_key(conn_ip) if cached else 0
            code = conn_cache.code(key) if cached else MISS
            missed = code == MISS
            if missed:
                code = self._conn_ip_miss(conn_ip)
                if cached:
                    conn_cache.put(key, code)
            rejected_conn_ips += code == CODE_REJECTED
            key = sender_key(sender) if cached else 0
            code = sender_cache.code(key) if cached else MISS
            if code == MISS:
                missed = True
                code = self._sender_miss(sender)
                if cached:
                    sender_cache.put(key, code)
            rejected_senders += code == CODE_REJECTED
            done += 1
            if missed and deadline is not None and time.perf_counter() > deadline:
                break
        self.records += done
        self.rejected_conn_ips += rejected_conn_ips
        self.rejected_senders += rejected_senders
        for counter in self.counters:
            counter.flush_if_full()
        return done

    def _sender_miss(self, sender: str | None) -> int:
        """Decide a raw sender not cached; its outcome code (raw_cache.py)."""
        if self._first is not None:
            code = self._classified_in_c(SENDERS, (sender,))[0][0]
            if code != UNSURE:
                return _C_CODES[code]
        part = split_sender(sender)
        result = self._domain_part_miss(part, hash(part)) if type(part) is str else part
        return COUNTED if type(result) is tuple else _CODES[cast(Outcome, result)]

    def _look_up(
        self, cache: RawCache | CRawCache, values: Sequence[str | None]
    ) -> tuple[Keys, Codes]:
        if self.raw_cache_entries:
            return cache.look_up(values)
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=np.int8)

    def _conn_misses(
        self,
        conn_ips: Sequence[str | None],
        keys: Keys,
        codes: Codes,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
    ) -> int:
        """Fill in the codes of the IPs not cached, a chunk of new values at a time;
        how many pairs are done (see record_columns)."""
        return self._misses_in_c_then(
            self._conn_misses_in_python, CONN_IPS, self._conn_cache, conn_ips, keys, codes,
            misses, deadline,
        )  # fmt: skip

    def _conn_misses_in_python(
        self,
        conn_ips: Sequence[str | None],
        keys: Keys,
        codes: Codes,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
    ) -> int:
        """_conn_misses() by normalise.py."""
        indices: list[int] = misses.tolist()
        if not self.raw_cache_entries:  # no keys: every value on its own
            firsts, repeated = indices, False
        else:
            # A new value twice in one batch is normalised once: where it is first.
            miss_keys: list[int] = keys[misses].tolist()
            first_at = dict(zip(reversed(miss_keys), reversed(indices), strict=True))
            repeated = len(first_at) < len(indices)
            firsts = sorted(first_at.values()) if repeated else indices
        done = len(codes)
        found: list[int] = []
        for start in range(0, len(firsts), SPLIT_CHUNK):
            seen = self._conn_ips_seen([conn_ips[at] for at in firsts[start : start + SPLIT_CHUNK]])
            found += _codes_of(seen)
            if deadline is not None and time.perf_counter() > deadline:
                if len(found) < len(firsts):  # pairs before the next new value are known
                    done = firsts[len(found)]
                break
        firsts = firsts[: len(found)]
        if not self.raw_cache_entries:
            codes[firsts] = found
            return done
        new_keys = keys[firsts]
        if repeated:
            code_of = dict(zip(new_keys.tolist(), found, strict=True))
            some = misses[misses < done]
            codes[some] = list(map(code_of.__getitem__, keys[some].tolist()))
        else:
            codes[firsts] = found
        self._conn_cache.remember(new_keys, found)
        return done

    def _follow_the_clock(self) -> None:
        """At a new period: stamp what is queued with the old one, empty the caches."""
        slot = int(self._monotonic() - self._started) // self._period
        if slot == self._slot:
            return
        for counter in self.counters:
            counter.flush()
            counter.stamp = (slot + 1) * self._period
        for cache in self._caches:
            cache.clear()
        self._slot = slot

    def window_counts(self) -> tuple[WindowCounts, ...]:
        """Each window's distinct counts, as of now.

        Computed again only when a second passed or, while every category is
        exact, a record arrived: an estimated window costs a pass over a 12.5 MiB
        sketch, so estimates follow new records once a second.
        """
        if not self.windows:
            return ()
        self._follow_the_clock()
        elapsed = int(self._monotonic() - self._started)
        estimated = any(counter.estimated for counter in self.counters)
        key = (elapsed, -1 if estimated else self.records)
        cache = self._window_cache
        if cache is not None and cache[0] == key:
            return cache[1]
        result = []
        for window in self.windows:
            since = cutoff_stamp(elapsed, window)
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
        self._window_cache = (key, tuple(result))
        return self._window_cache[1]

    def roll_fleet_epoch(self) -> None:
        """Move the fleet sketch to the epoch of now, if that is a later one.

        The raw-value caches start again: a value seen yesterday is a cache hit
        today, and a hit feeds no sketch, so without this it would be missing from
        the new epoch's registers. (Its digest is queued once more; the exact
        counter keeps it once.)
        """
        fleet = self.fleet
        if fleet is not None and fleet.advance_to(fleet.epoch_at(self._clock())):
            for cache in self._caches:
                cache.clear()

    def _sender_misses(
        self,
        senders: Sequence[str | None],
        keys: Keys,
        codes: Codes,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
    ) -> int:
        """Fill in the codes of the senders whose raw text was not cached: split them
        (a chunk at a time), then look their domain parts up, normalising only new
        ones. Returns how many pairs are done (see record_columns).

        No Python statement per value on the usual path (a new raw text whose
        domain part is known: most of them, since addresses are users times
        domains): the split is one regular-expression pass, the domain parts are
        looked up by a comprehension, and the raw texts remembered in one call.
        New domain parts are normalised and hashed a batch at a time.

        Where C decides first sightings (keyed_hash.py), it decides the common
        forms first, and only the others go this way.
        """
        return self._misses_in_c_then(
            self._sender_misses_in_python, SENDERS, self._sender_cache, senders, keys, codes,
            misses, deadline,
        )  # fmt: skip

    def _sender_misses_in_python(
        self,
        senders: Sequence[str | None],
        keys: Keys,
        codes: Codes,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
    ) -> int:
        """_sender_misses() by split_senders() and normalise.py."""
        indices: list[int] = misses.tolist()
        domain_get = self._domain_cache.get
        # Split a chunk at a time under a deadline: splitting is cheap beside
        # normalising, but not free, and the values past the deadline wait.
        chunk = len(indices) if deadline is None else SPLIT_CHUNK
        for first in range(0, len(indices), chunk):
            some = indices[first : first + chunk]
            parts = split_senders([senders[index] for index in some])
            # An Outcome (IGNORED or REJECTED) is decided by the split already.
            found = cast(
                "list[tuple[int, bytes] | Outcome | None]",
                [domain_get(hash(part)) if type(part) is str else part for part in parts],
            )
            done = len(some)
            if None in found:
                done = self._new_domain_parts(parts, found, deadline)
            found_codes = _codes_of(found[:done])
            codes[some[:done]] = found_codes
            if self.raw_cache_entries:
                self._sender_cache.remember(keys[some[:done]], found_codes)
            if done < len(some) or (deadline is not None and time.perf_counter() > deadline):
                return some[done - 1] + 1
        return len(codes)

    def _new_domain_parts(
        self,
        parts: list[str | Outcome],
        found: list[tuple[int, bytes] | Outcome | None],
        deadline: float | None,
    ) -> int:
        """Fill in found[i] where it is None (parts[i], a str, not in the domain-part
        cache): each new part normalised once (_domain_parts_seen) and entered in
        the cache. Returns how many entries of found, from the first, are filled in
        (all of them without a deadline)."""
        # All of them, as often (a new sender whose domain part is new too), costs
        # no search.
        count = found.count(None)
        missing = list(range(len(found)) if count == len(found) else positions(found, None))
        missing_keys = [hash(parts[at]) for at in missing]
        # A new part twice in the batch is normalised once: where it is first.
        first_at = dict(zip(reversed(missing_keys), reversed(missing), strict=True))
        firsts = sorted(first_at.values()) if len(first_at) < len(missing) else missing
        new_parts: list[str] = [parts[at] for at in firsts]  # type: ignore[misc]
        seen = self._domain_parts_seen(new_parts, deadline)
        # Pairs before the first new part not done are known.
        done = len(found) if len(seen) == len(firsts) else firsts[len(seen)]
        # Only the parts done (a prefix of firsts) are entered.
        new = dict(zip([hash(parts[at]) for at in firsts[: len(seen)]], seen, strict=True))
        for at, key in zip(missing, missing_keys, strict=True):
            if at >= done:
                break
            found[at] = new[key]
        entries = self.raw_cache_entries
        if entries:
            if len(self._domain_cache) + len(new) > entries:
                self._domain_cache.clear()  # start again: simpler than evicting one by one
            self._domain_cache.update(islice(new.items(), entries))
        return done

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


def _codes_of(results: Sequence[object]) -> list[int]:
    """The raw-value caches' code for each first sighting's result: COUNTED for a
    digest or (category, digest), else the Outcome's code."""
    if Outcome.REJECTED not in results and Outcome.IGNORED not in results:
        return [COUNTED] * len(results)
    return [_CODES[result] if type(result) is Outcome else COUNTED for result in results]
