"""The tracker's counting of `interned` messages (docs/protocol.md). Pure, no I/O.

A mixin of Tracker (tracker.py), which owns the salt, the counters and the
caches. A message is counted in two steps, after the server has checked it whole
against the connection's tables (value_table.py):

1. define_values(): each new value goes the way of any value (the raw-value
   caches, then normalising on a miss, its digest queued for its counter, the
   fleet fed), and what it came to (code, digest, next epoch's fleet register)
   is returned for the table. A definition cache (definition_cache.py, keyed by
   hash() of the raw text, cleared with the raw-value caches) makes the same value
   defined by eight workers cost one normalisation and seven array look-ups.
   Under a deadline it stops after the miss during which the deadline passed, as
   record_columns() does.
2. count_references(): numpy only. `records` grows by N; the rejected tallies by
   the references to rejected values; with windows, the counted ids whose digest
   was not queued in the current period are queued again, in one call per
   category; in fleet mode, ids defined in the epoch before get the registers
   their definition computed for this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Final, cast

import numpy as np
import numpy.typing as npt

from servertracker.sender_split import Outcome, split_sender, split_senders
from trackerd.core import keyed_hash
from trackerd.core.definition_cache import DefinitionCache
from trackerd.core.distinct_counter import DistinctCounter
from trackerd.core.fleet_sketch import FleetSketch
from trackerd.core.keyed_hash import C_CHUNK, UNSURE
from trackerd.core.normalise import Category, classify_conn_ip, classify_domain_part
from trackerd.core.value_table import (
    COUNTED,
    IGNORED,
    REJECTED,
    Codes,
    Definitions,
    Digests,
    Ids,
    Refs,
    ValueTable,
    ValueTables,
)
from trackerd.core.windows import Window

if TYPE_CHECKING:
    from trackerd.core._cfirst import FirstSightings

#: What a definition came to, from a miss: one int, digest | code << 64 | register << 72.
Defined = int
_DIGEST_BITS: Final = 64
_CODE_BITS: Final = 8
_DIGEST_MASK: Final = (1 << _DIGEST_BITS) - 1
_CODE_MASK: Final = (1 << _CODE_BITS) - 1
_REGISTER_SHIFT: Final = _DIGEST_BITS + _CODE_BITS

#: Which column a run of definitions is of.
IPS: Final = 0
SENDERS: Final = 1

_OUTCOME_CODES: Final = {Outcome.REJECTED: REJECTED, Outcome.IGNORED: IGNORED}
_NO_DIGEST: Final = bytes(8)
#: A value table's code for each of keyed_hash.classify()'s codes (UNSURE: none).
_C_TABLE_CODES: Final = np.array(
    [0, COUNTED + Category.CONN_IP, COUNTED + Category.DOMAIN, COUNTED + Category.IP_SERVER,
     REJECTED, IGNORED], dtype=np.int8,
)  # fmt: skip
#: New values normalised at a time under a deadline (tracker.py's SPLIT_CHUNK).
DEFINE_CHUNK: Final = 256


class InternedCounting:
    """Counting of interned messages; mixed into Tracker, whose attributes these are."""

    counters: tuple[DistinctCounter, ...]
    fleet: FleetSketch | None
    windows: tuple[Window, ...]
    records: int
    rejected_conn_ips: int
    rejected_senders: int
    raw_cache_entries: int
    _slot: int
    #: Per column: hash(raw text) -> what it came to. Cleared with the raw-value caches.
    _defined: tuple[DefinitionCache, DefinitionCache]
    _digest: Callable[[int, bytes], bytes]
    _domain_part_miss: Callable[[str, int], tuple[int, bytes] | Outcome]
    _domain_cache: dict[int, tuple[int, bytes] | Outcome]
    _conn_ips_seen: Callable[[Sequence[str | None]], list[bytes | Outcome]]
    _new_domain_parts: Callable[
        [list[str | Outcome], list[tuple[int, bytes] | Outcome | None], float | None], int
    ]
    _follow_the_clock: Callable[[], None]
    #: First sightings in C (keyed_hash.py), or None; tracker.py's _classified_in_c.
    _first: FirstSightings | None
    _classified_in_c: Callable[[int, Sequence[str | None]], tuple[bytes, bytes]]

    def value_tables(self, granted: int) -> ValueTables:
        """Empty tables of granted ids each, with what this tracker's mode needs."""
        return ValueTables(granted, windowed=bool(self.windows), fleet=self.fleet is not None)

    @property
    def table_period(self) -> int:
        """The current period as value tables store it (0 means never)."""
        return self._slot + 1

    def define_values(
        self, column: int, values: Sequence[str], deadline: float | None = None
    ) -> tuple[int, Definitions]:
        """What values[:done] came to, queued and fed as sightings; done is all of them
        without a deadline, at least one with one.

        The definition cache is looked up a batch at a time (numpy); only its misses
        run Python code, one normalisation each (a value new twice in one batch once).
        """
        if self.windows:
            self._follow_the_clock()
        cache = self._defined[column]
        count = len(values)
        keys = None
        if self.raw_cache_entries:
            keys = np.fromiter(map(hash, values), dtype=np.int64, count=count)
            hits, slots = cache.look_up(keys)
            # Garbage where there is no hit: filled in below.
            codes, digests = cache.codes.ravel().take(slots), cache.digests.ravel().take(slots)
            registers = None
            if cache.registers is not None:
                registers = cache.registers.ravel().take(slots)
            misses = np.flatnonzero(~hits)
        else:
            codes, digests = np.zeros(count, dtype=np.int8), np.zeros(count, dtype=np.uint64)
            registers = np.zeros(count, dtype=np.uint32) if self.fleet is not None else None
            misses = np.arange(count)
        done = count
        if misses.size:
            done = self._define_misses(column, values, keys, misses, deadline, codes, digests,
                                       registers)  # fmt: skip
        return done, Definitions(
            codes[:done], digests[:done], registers[:done] if registers is not None else None
        )

    def _define_misses(
        self,
        column: int,
        values: Sequence[str],
        keys: npt.NDArray[np.int64] | None,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
        codes: npt.NDArray[np.int8],
        digests: npt.NDArray[np.uint64],
        registers: npt.NDArray[np.uint32] | None,
    ) -> int:
        """Normalise the values not cached into the arrays; how many values are done."""
        if self.fleet is None:
            return self._define_batch(column, values, keys, misses, deadline, codes, digests)
        # Fleet mode: one at a time, for the canonical value's next-epoch register.
        miss = self._define_ip if column == IPS else self._define_sender
        indices: list[int] = misses.tolist()
        miss_keys: list[int] = keys[misses].tolist() if keys is not None else []
        new: dict[int, Defined] = {}
        results: list[Defined] = []
        done = len(values)
        for n, index in enumerate(indices):
            result = new.get(miss_keys[n]) if keys is not None else None
            if result is None:
                result = miss(values[index])
                if keys is not None:
                    new[miss_keys[n]] = result
            results.append(result)
            if deadline is not None and time.perf_counter() > deadline:
                done = index + 1
                break
        found = misses[: len(results)]
        codes[found] = [r >> _DIGEST_BITS & _CODE_MASK for r in results]
        digests[found] = [r & _DIGEST_MASK for r in results]
        if registers is not None:
            registers[found] = [r >> _REGISTER_SHIFT for r in results]
        if keys is not None:
            self._defined[column].remember(
                np.array(list(new), dtype=np.int64),
                np.array([r >> _DIGEST_BITS & _CODE_MASK for r in new.values()], dtype=np.int8),
                np.array([r & _DIGEST_MASK for r in new.values()], dtype=np.uint64),
                np.array([r >> _REGISTER_SHIFT for r in new.values()], dtype=np.uint32)
                if registers is not None
                else None,
            )
        return done

    def _define_batch(
        self,
        column: int,
        values: Sequence[str],
        keys: npt.NDArray[np.int64] | None,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
        codes: npt.NDArray[np.int8],
        digests: npt.NDArray[np.uint64],
    ) -> int:
        """_define_misses() outside fleet mode: record_columns()' first sightings, a
        batch at a time (tracker.py: _conn_ips_seen, _new_domain_parts), DEFINE_CHUNK
        values at a time under a deadline. Where C decides first sightings, it
        decides the common forms first, and only the others go that way."""
        if self._first is None:
            return self._define_in_python(column, values, keys, misses, deadline, codes, digests)
        misses, done = self._define_in_c(column, values, keys, misses, deadline, codes, digests)
        if misses.size:
            done = min(done, self._define_in_python(column, values, keys, misses, deadline, codes,
                                                    digests))  # fmt: skip
        return done

    def _define_in_c(
        self,
        column: int,
        values: Sequence[str],
        keys: npt.NDArray[np.int64] | None,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
        codes: npt.NDArray[np.int8],
        digests: npt.NDArray[np.uint64],
    ) -> tuple[npt.NDArray[np.intp], int]:
        """The misses C is sure of, C_CHUNK at a time, the clock checked after each
        chunk: codes and digests filled in, digests queued, definitions cached.
        Returns the misses before the limit left to normalise.py, and the limit: how
        many values are done once those are (tracker.py's _misses_in_c)."""
        limit = len(values)
        unsure = []
        c_column = keyed_hash.CONN_IPS if column == IPS else keyed_hash.SENDERS
        for start in range(0, misses.size, C_CHUNK):
            chunk = misses[start : start + C_CHUNK]
            found, found_digests = self._classified_in_c(
                c_column, [values[at] for at in chunk.tolist()]
            )
            c_codes = np.frombuffer(found, dtype=np.uint8)
            sure = c_codes != UNSURE
            at = chunk[sure]
            codes[at] = _C_TABLE_CODES[c_codes[sure]]
            digests[at] = np.frombuffer(found_digests, dtype="<u8")[sure]
            if keys is not None:
                self._defined[column].remember(keys[at], codes[at], digests[at], None)
            unsure.append(chunk[~sure])
            more = start + C_CHUNK < misses.size
            if more and deadline is not None and time.perf_counter() > deadline:
                limit = int(misses[start + C_CHUNK])
                break
        return np.concatenate(unsure) if unsure else misses, limit

    def _define_in_python(
        self,
        column: int,
        values: Sequence[str],
        keys: npt.NDArray[np.int64] | None,
        misses: npt.NDArray[np.intp],
        deadline: float | None,
        codes: npt.NDArray[np.int8],
        digests: npt.NDArray[np.uint64],
    ) -> int:
        """_define_batch() by normalise.py."""
        indices: list[int] = misses.tolist()
        chunk = len(indices) if deadline is None else DEFINE_CHUNK
        done = len(values)
        taken = 0
        for start in range(0, len(indices), chunk):
            some = [values[index] for index in indices[start : start + chunk]]
            if column == IPS:
                seen = _store_ips(self._conn_ips_seen(some), misses[start:], codes, digests)
            else:
                seen = _store_senders(self._senders_seen(some, deadline), misses[start:], codes,
                                      digests)  # fmt: skip
            taken = start + seen
            if deadline is not None and (seen < len(some) or time.perf_counter() > deadline):
                done = indices[taken - 1] + 1
                break
        if keys is not None and taken:
            # A value new twice in the batch enters twice: the cache keeps one.
            at = misses[:taken]
            self._defined[column].remember(keys[at], codes[at], digests[at], None)
        return done

    def _senders_seen(
        self, values: list[str], deadline: float | None
    ) -> list[tuple[int, bytes] | Outcome]:
        """What a batch of raw senders came to, as record_columns() finds it: split,
        the domain-part cache, new parts normalised once; a prefix under a deadline."""
        parts = split_senders(cast("list[str | None]", values))
        get = self._domain_cache.get
        # One cast for the list, not a call per value: a part that is not a str is an
        # Outcome (split_senders), which mypy cannot narrow from `type(part) is str`.
        found = cast(
            "list[tuple[int, bytes] | Outcome | None]",
            [get(hash(part)) if type(part) is str else part for part in parts],
        )
        done = len(found)
        if None in found:
            done = self._new_domain_parts(parts, found, deadline)
        return found[:done]  # type: ignore[return-value]

    def _define_ip(self, value: str) -> Defined:
        key = classify_conn_ip(value)
        if type(key) is not bytes:
            return _OUTCOME_CODES[key] << _DIGEST_BITS  # type: ignore[index]
        return self._counted(Category.CONN_IP, key)

    def _define_sender(self, value: str) -> Defined:
        part = split_sender(value)
        if type(part) is not str:
            return _OUTCOME_CODES[part] << _DIGEST_BITS  # type: ignore[index]
        if self.fleet is None:
            # The domain-part cache and miss of record_columns(): queued once.
            known = self._domain_part_miss(part, hash(part))
            if type(known) is not tuple:
                return _OUTCOME_CODES[known] << _DIGEST_BITS  # type: ignore[index]
            return (COUNTED + known[0]) << _DIGEST_BITS | int.from_bytes(known[1], "little")
        # Fleet mode needs the canonical value for the next epoch's register.
        classified = classify_domain_part(part)
        if type(classified) is not tuple:
            return _OUTCOME_CODES[classified] << _DIGEST_BITS  # type: ignore[index]
        return self._counted(*classified)

    def _counted(self, category: int, key: bytes) -> Defined:
        """Queue a canonical value's digest and feed the fleet, as a cache miss does."""
        digest = self._digest(category, key)
        self.counters[category].pending.append(digest)
        register = 0
        if self.fleet is not None:
            self.fleet.add(category, key)
            register = self.fleet.next_register(category, key)
        code = COUNTED + category
        return register << _REGISTER_SHIFT | code << _DIGEST_BITS | int.from_bytes(digest, "little")

    def define_into(
        self,
        tables: ValueTables,
        column: int,
        first: int,
        values: Sequence[str],
        deadline: float | None = None,
    ) -> int:
        """define_values() of a column, stored in its table from id first on; how
        many of values are done (see define_values)."""
        done, found = self.define_values(column, values, deadline)
        fleet_epoch = self.fleet.epoch if self.fleet is not None else None
        table = tables.ips if column == IPS else tables.senders
        table.define(first, found, self.table_period, fleet_epoch)
        return done

    def count_references(self, tables: ValueTables, ip_refs: Refs, sender_refs: Refs) -> None:
        """Count the pairs of a message whose definitions are all stored."""
        if self.windows:
            self._follow_the_clock()
        rejected = []
        for table, refs in ((tables.ips, ip_refs), (tables.senders, sender_refs)):
            ids, codes = table.resolve(refs)
            rejected.append(int(np.count_nonzero(codes == REJECTED)))
            if self.windows:
                self._queue_again(table, table.due_for_period(ids, codes, self.table_period))
            if self.fleet is not None:
                self._feed_epoch(table, table.due_for_epoch(ids, codes, self.fleet.epoch))
        self.records += ip_refs.size
        self.rejected_conn_ips += rejected[0]
        self.rejected_senders += rejected[1]
        for counter in self.counters:
            counter.flush_if_full()

    def _queue_again(self, table: ValueTable, due: Ids) -> None:
        if not due.size:
            return
        categories = table.codes[due] - COUNTED
        for category in Category:
            chosen = due[categories == category]
            if chosen.size:
                digests = table.digests[chosen].astype("<u8", copy=False)
                self.counters[category].queue_chunk(digests.tobytes())

    def _feed_epoch(self, table: ValueTable, due: Ids) -> None:
        if not due.size:
            return
        assert self.fleet is not None and table.fleet_next is not None
        categories = table.codes[due] - COUNTED
        for category in Category:
            chosen = due[categories == category]
            if chosen.size:
                self.fleet.add_registers(category, table.fleet_next[chosen])
        table.fleet_next[due] = 0  # fed: at most once an epoch


def _store_ips(
    seen: list[bytes | Outcome], at: npt.NDArray[np.intp], codes: Codes, digests: Digests
) -> int:
    """Store what new connection IPs came to (tracker.py's _conn_ips_seen: a digest or
    an Outcome each) at at[:len(seen)]; how many. All digests, as usual: two array
    writes, no Python statement per value."""
    at = at[: len(seen)]
    if Outcome.REJECTED not in seen and Outcome.IGNORED not in seen:
        codes[at] = COUNTED + Category.CONN_IP
        digests[at] = np.frombuffer(b"".join(seen), dtype="<u8")  # type: ignore[arg-type]
        return len(seen)
    codes[at] = [COUNTED + Category.CONN_IP if type(r) is bytes else _OUTCOME_CODES[r]  # type: ignore[index]
                 for r in seen]  # fmt: skip
    digests[at] = np.frombuffer(
        b"".join([r if type(r) is bytes else _NO_DIGEST for r in seen]),
        dtype="<u8",
    )
    return len(seen)


_CATEGORY_OF = itemgetter(0)
_DIGEST_OF = itemgetter(1)


def _store_senders(
    seen: list[tuple[int, bytes] | Outcome], at: npt.NDArray[np.intp], codes: Codes,
    digests: Digests,
) -> int:  # fmt: skip
    """_store_ips() for new senders: (category, digest) or an Outcome each."""
    at = at[: len(seen)]
    if Outcome.REJECTED not in seen and Outcome.IGNORED not in seen:
        counted = cast("list[tuple[int, bytes]]", seen)
        categories = np.fromiter(map(_CATEGORY_OF, counted), dtype=np.int8, count=len(seen))
        codes[at] = categories + COUNTED
        digests[at] = np.frombuffer(b"".join(map(_DIGEST_OF, counted)), dtype="<u8")
        return len(seen)
    codes[at] = [COUNTED + r[0] if type(r) is tuple else _OUTCOME_CODES[r]  # type: ignore[index]
                 for r in seen]  # fmt: skip
    digests[at] = np.frombuffer(
        b"".join([r[1] if type(r) is tuple else _NO_DIGEST for r in seen]),
        dtype="<u8",
    )
    return len(seen)
